//! mimalloc's settings for the batch layer's processes.
//!
//! By default mimalloc (v3, which `mimalloc` builds) returns freed memory to the OS a second
//! after it is freed (`purge_delay`). A recompute frees and allocates hundreds of MiB of Arrow buffers and hash
//! tables a second, so the kernel kept zeroing fresh pages: 30% of a full recompute's profile was
//! `clear_page_erms` under mimalloc's page faults (BENCHMARKS.md, issue 18). Never purging made
//! the full recompute of 20M events 16% faster (33.8 s to 28.3 s; the default gave 33.8 s twice).
//! The cost: a long-running `batch-layer schedule` keeps its peak between runs, as a JVM heap
//! does. `MIMALLOC_PURGE_DELAY` in the environment still decides, if set.
//!
//! Nor does the process take transparent huge pages, which mimalloc asks the kernel for
//! (`MADV_HUGEPAGE`) when it maps an arena: the recompute's memory faulted in 2 MiB at a time
//! cost 17-21 s of system time in a 18-20 s run, and 5-8 s in 14 s without them, with 1.5 GiB
//! less peak RSS (BENCHMARKS.md, 2026-12-04). `MIMALLOC_ALLOW_THP` in the environment still
//! decides, if set.

// The workspace denies unsafe code; setting a C option is the one exception.
#![allow(unsafe_code)]

/// `mi_option_purge_delay` in mimalloc.h's `mi_option_e` (v2 and v3 alike); `libmimalloc-sys`
/// does not name it.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Freed memory stays with the process for reuse, unless `MIMALLOC_PURGE_DELAY` says otherwise,
/// and memory is faulted in as small pages, unless `MIMALLOC_ALLOW_THP` says otherwise.
pub fn keep_freed_memory() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets an integer option; mimalloc reads it at each purge decision.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    refuse_transparent_huge_pages();
}

/// What mimalloc does at start when `MIMALLOC_ALLOW_THP=0`: the kernel gives this process no
/// transparent huge page from now on, whatever its mappings asked for, the arenas mapped before
/// this call included. A kernel without the flag is left as it is.
fn refuse_transparent_huge_pages() {
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // SAFETY: prctl with integer arguments only.
        let _ = unsafe { nix::libc::prctl(nix::libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_option_is_purge_delay() {
        // Its default is 1000 ms in mimalloc v3 (10 in v2): a wrong index reads another option.
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            // SAFETY: reads an integer option.
            let default = unsafe { libmimalloc_sys::mi_option_get(MI_OPTION_PURGE_DELAY) };
            assert!(default == 1000 || default == 10, "purge_delay = {default}");
        }
    }

    #[test]
    fn the_process_takes_no_transparent_huge_pages() {
        refuse_transparent_huge_pages();
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
            // SAFETY: prctl with integer arguments only.
            let disabled = unsafe { nix::libc::prctl(nix::libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
            assert_eq!(disabled, 1);
        }
    }
}
