//! gzip for answers that are asked again.
//!
//! A day of per-minute points in a few groups is half a megabyte of JSON, most of it repeated
//! keys, and at a few thousand requests a second moving it costs more than finding it. An answer
//! in the body cache is therefore compressed the second time it is asked for, once, and every
//! later request that accepts gzip gets those bytes. A first request is never kept waiting on
//! compression: it gets the plain body.

use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::http::header::ACCEPT_ENCODING;
use flate2::Compression;
use flate2::write::GzEncoder;
use std::io::Write;
use std::sync::Arc;
use tokio::sync::OnceCell;

/// An answer as the body cache holds it.
#[derive(Clone)]
pub struct CachedBody {
    plain: Bytes,
    /// Filled by the first request that accepts gzip and finds the answer cached.
    gzip: Arc<OnceCell<Bytes>>,
}

impl CachedBody {
    pub fn new(plain: Bytes) -> Self {
        CachedBody {
            plain,
            gzip: Arc::default(),
        }
    }

    pub fn plain(&self) -> Bytes {
        self.plain.clone()
    }

    /// The gzip form, compressed on first use (off the async workers; requests asking
    /// meanwhile wait for that one compression). `None` if compressing failed.
    pub async fn gzip(&self) -> Option<Bytes> {
        let plain = self.plain.clone();
        self.gzip
            .get_or_try_init(|| tokio::task::spawn_blocking(move || gzip(&plain)))
            .await
            .ok()
            .cloned()
    }
}

impl crate::generation_cache::Weigh for CachedBody {
    /// The plain JSON, and an allowance for its gzip form (filled later; JSON of repeated keys
    /// shrinks several-fold).
    fn bytes(&self) -> usize {
        self.plain.len() + self.plain.len() / 4
    }
}

/// The fastest level: the answer is compressed once and sent many times, but the request that
/// compresses it waits for it. JSON of repeated keys shrinks several-fold even so.
fn gzip(plain: &[u8]) -> Bytes {
    let mut encoder = GzEncoder::new(Vec::with_capacity(plain.len() / 8), Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(plain);
    Bytes::from(encoder.finish().unwrap_or_default())
}

/// The request's `Accept-Encoding` admits gzip (RFC 9110 §12.5.3): `gzip` or `*` listed with a
/// weight above zero.
pub fn accepts_gzip(headers: &HeaderMap) -> bool {
    headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|coding| {
            let mut parts = coding.split(';');
            let name = parts.next().unwrap_or("").trim();
            let weight = parts
                .filter_map(|p| p.trim().strip_prefix("q="))
                .find_map(|q| q.trim().parse::<f32>().ok())
                .unwrap_or(1.0);
            (name.eq_ignore_ascii_case("gzip") || name == "*") && weight > 0.0
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use flate2::read::GzDecoder;
    use std::io::Read;

    fn accepting(values: &[&str]) -> bool {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(ACCEPT_ENCODING, HeaderValue::from_str(value).unwrap());
        }
        accepts_gzip(&headers)
    }

    #[test]
    fn gzip_is_accepted_only_when_listed_with_weight() {
        assert!(accepting(&["gzip"]));
        assert!(accepting(&["br;q=1.0, GZIP;q=0.5"]));
        assert!(accepting(&["deflate", "gzip, br"]));
        assert!(accepting(&["*"]));
        assert!(!accepting(&[]));
        assert!(!accepting(&["identity"]));
        assert!(!accepting(&["gzip;q=0"]));
        assert!(!accepting(&["x-gzip-not, br"]));
    }

    #[tokio::test]
    async fn the_gzip_form_decodes_to_the_plain_body_and_is_made_once() {
        let plain = Bytes::from(r#"{"t":"2026-11-21T12:00:00Z","value":1.0},"#.repeat(2_000));
        let body = CachedBody::new(plain.clone());
        let copy = body.clone();
        let compressed = body.gzip().await.expect("compressed");
        assert!(compressed.len() * 5 < plain.len(), "{}", compressed.len());
        assert_eq!(
            copy.gzip().await.expect("compressed").as_ptr(),
            compressed.as_ptr(),
            "compressed twice"
        );
        let mut decoded = Vec::new();
        GzDecoder::new(&compressed[..])
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, plain);
        assert_eq!(body.plain(), plain);
    }
}
