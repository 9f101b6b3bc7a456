//! LEB128 varints, the integers of the packed formats (`metrics::cells`, `hll`): seven bits a
//! byte, low bits first, the high bit set on every byte but the last.

/// Why a varint could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VarintError {
    /// The bytes end inside it.
    Cut,
    /// It holds more than 128 bits.
    TooWide,
}

pub fn put(out: &mut Vec<u8>, mut value: u128) {
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(low);
            return;
        }
        out.push(low | 0x80);
    }
}

/// The varint at `*at`, moving `*at` past the bytes read.
pub fn get(bytes: &[u8], at: &mut usize) -> Result<u128, VarintError> {
    let mut value: u128 = 0;
    for shift in (0..128).step_by(7) {
        let byte = *bytes.get(*at).ok_or(VarintError::Cut)?;
        *at += 1;
        let bits = u128::from(byte & 0x7f);
        if shift > 0 && bits >> (128 - shift) != 0 {
            return Err(VarintError::TooWide);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(VarintError::TooWide)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_bad_bytes_are_refused() {
        for value in [0u128, 1, 127, 128, 300, u64::MAX as u128, u128::MAX] {
            let mut out = Vec::new();
            put(&mut out, value);
            let mut at = 0;
            assert_eq!(get(&out, &mut at), Ok(value));
            assert_eq!(at, out.len());
            let mut at = 0;
            assert_eq!(get(&out[..out.len() - 1], &mut at), Err(VarintError::Cut));
        }
        let mut at = 0;
        assert_eq!(get(&[0xff; 20], &mut at), Err(VarintError::TooWide));
    }
}
