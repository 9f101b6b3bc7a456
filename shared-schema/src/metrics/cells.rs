//! Cells packed into one byte string: the speed layer stores the cells of one bucket that a
//! checkpoint changed as one `speed_cells` row, a section per metric, not a row per cell, and
//! the readers (serving, divergence) unpack it here. Writer and readers share this one definition.
//!
//! Layout: a format byte, the cell count, then per cell the dimensions' length and UTF-8
//! bytes, `count`, `sum_micros`, a flags byte, `min_micros` and `max_micros` if flagged, and
//! the sketch if flagged: its length and its own encoding (`hll`: sparse, a few bytes per value,
//! up to 2 048 values; dense past that). Integers are LEB128 varints, signed ones zigzagged
//! first: most counts and sums take a byte or two, and a sketch of a few hundred values a few
//! kilobytes at most instead of 64 KiB. Postgres stores the rows uncompressed
//! (its compression would cost the database the CPU this saves), so the bytes here are the
//! bytes written.

use super::Partial;
use crate::hll::{Hll, SketchError};
use crate::varint::{self, VarintError};

const FORMAT: u8 = 1;
const HAS_MIN: u8 = 1;
const HAS_MAX: u8 = 2;
/// Format 1 sketches (precision 14), written before sketches had their own encoding: the 2^14
/// registers, or the non-zero ones. Still read.
const LEGACY_DENSE_SKETCH: u8 = 4;
const LEGACY_SPARSE_SKETCH: u8 = 8;
/// A sketch in its own encoding (`Hll::to_bytes`), after its length.
const SKETCH: u8 = 16;
/// Registers of a legacy sketch.
const LEGACY_REGISTERS: usize = 1 << 14;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeCellsError {
    #[error("packed cells of format {0}, which this version cannot read")]
    Format(u8),
    #[error("packed cells end inside a cell, at byte {0}")]
    Truncated(usize),
    #[error("packed cells hold a malformed number at byte {0}")]
    Number(usize),
    #[error("packed cells hold dimensions that are not UTF-8, at byte {0}")]
    Dims(usize),
    #[error("packed cells hold a malformed sketch: {0}")]
    Sketch(#[from] SketchError),
}

/// Packs `cells` (dimensions and partial).
pub fn encode_cells<'a>(cells: impl ExactSizeIterator<Item = (&'a str, &'a Partial)>) -> Vec<u8> {
    let mut out = vec![FORMAT];
    put_unsigned(&mut out, cells.len() as u128);
    for (dims, partial) in cells {
        put_unsigned(&mut out, dims.len() as u128);
        out.extend_from_slice(dims.as_bytes());
        put_signed(&mut out, partial.count as i128);
        put_signed(&mut out, partial.sum_micros);
        let flags = (u8::from(partial.min_micros.is_some()) * HAS_MIN)
            | (u8::from(partial.max_micros.is_some()) * HAS_MAX)
            | (u8::from(partial.sketch.is_some()) * SKETCH);
        out.push(flags);
        for bound in [partial.min_micros, partial.max_micros]
            .into_iter()
            .flatten()
        {
            put_signed(&mut out, bound as i128);
        }
        if let Some(sketch) = &partial.sketch {
            let bytes = sketch.to_bytes();
            put_unsigned(&mut out, bytes.len() as u128);
            out.extend_from_slice(&bytes);
        }
    }
    out
}

/// Joins packed cells of several metrics into one row: a format byte, the number of sections,
/// then each one's length and bytes. A reader splits them and decodes only the metrics it wants.
pub fn join_sections(sections: &[Vec<u8>]) -> Vec<u8> {
    let mut out = vec![FORMAT];
    put_unsigned(&mut out, sections.len() as u128);
    for section in sections {
        put_unsigned(&mut out, section.len() as u128);
        out.extend_from_slice(section);
    }
    out
}

/// Splits what [`join_sections`] joined.
pub fn split_sections(bytes: &[u8]) -> Result<Vec<&[u8]>, DecodeCellsError> {
    let mut reader = Reader { bytes, at: 0 };
    let format = reader.byte()?;
    if format != FORMAT {
        return Err(DecodeCellsError::Format(format));
    }
    let count = reader.unsigned::<u32>()?;
    let mut sections = Vec::with_capacity((count as usize).min(bytes.len()));
    for _ in 0..count {
        let length = reader.unsigned::<u32>()? as usize;
        sections.push(reader.slice(length)?);
    }
    if reader.at != bytes.len() {
        return Err(DecodeCellsError::Truncated(reader.at));
    }
    Ok(sections)
}

/// Unpacks what [`encode_cells`] packed.
pub fn decode_cells(bytes: &[u8]) -> Result<Vec<(String, Partial)>, DecodeCellsError> {
    let mut reader = Reader { bytes, at: 0 };
    let format = reader.byte()?;
    if format != FORMAT {
        return Err(DecodeCellsError::Format(format));
    }
    let count = reader.unsigned::<u32>()?;
    // The count comes from storage: reserve no more than the bytes could hold (a cell takes
    // at least four).
    let mut cells = Vec::with_capacity((count as usize).min(bytes.len() / 4));
    for _ in 0..count {
        let length = reader.unsigned::<u32>()? as usize;
        let at = reader.at;
        let dims = std::str::from_utf8(reader.slice(length)?)
            .map_err(|_| DecodeCellsError::Dims(at))?
            .to_string();
        let count = reader.signed::<i64>()?;
        let sum_micros = reader.signed::<i128>()?;
        let flags = reader.byte()?;
        let min_micros = (flags & HAS_MIN != 0)
            .then(|| reader.signed::<i64>())
            .transpose()?;
        let max_micros = (flags & HAS_MAX != 0)
            .then(|| reader.signed::<i64>())
            .transpose()?;
        let sketch = if flags & SKETCH != 0 {
            let length = reader.unsigned::<u32>()? as usize;
            Some(Hll::from_bytes(reader.slice(length)?)?)
        } else if flags & LEGACY_DENSE_SKETCH != 0 {
            Some(Hll::from_legacy_registers(
                reader.slice(LEGACY_REGISTERS)?.to_vec(),
            )?)
        } else if flags & LEGACY_SPARSE_SKETCH != 0 {
            let n = reader.unsigned::<u16>()?;
            let mut registers = vec![0u8; LEGACY_REGISTERS];
            let mut index = 0usize;
            for _ in 0..n {
                index += reader.unsigned::<u16>()? as usize;
                let value = reader.byte()?;
                let Some(register) = registers.get_mut(index) else {
                    return Err(SketchError::Format(index).into());
                };
                *register = value;
            }
            Some(Hll::from_legacy_registers(registers)?)
        } else {
            None
        };
        cells.push((
            dims,
            Partial {
                count,
                sum_micros,
                min_micros,
                max_micros,
                sketch,
            },
        ));
    }
    if reader.at != bytes.len() {
        return Err(DecodeCellsError::Truncated(reader.at));
    }
    Ok(cells)
}

fn put_unsigned(out: &mut Vec<u8>, value: u128) {
    varint::put(out, value);
}

fn put_signed(out: &mut Vec<u8>, value: i128) {
    put_unsigned(out, ((value << 1) ^ (value >> 127)) as u128);
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn slice(&mut self, length: usize) -> Result<&'a [u8], DecodeCellsError> {
        let end = self
            .at
            .checked_add(length)
            .filter(|&end| end <= self.bytes.len())
            .ok_or(DecodeCellsError::Truncated(self.at))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn byte(&mut self) -> Result<u8, DecodeCellsError> {
        Ok(self.slice(1)?[0])
    }

    fn varint(&mut self) -> Result<u128, DecodeCellsError> {
        let at = self.at;
        varint::get(self.bytes, &mut self.at).map_err(|e| match e {
            VarintError::Cut => DecodeCellsError::Truncated(self.at),
            VarintError::TooWide => DecodeCellsError::Number(at),
        })
    }

    fn unsigned<T: TryFrom<u128>>(&mut self) -> Result<T, DecodeCellsError> {
        let at = self.at;
        T::try_from(self.varint()?).map_err(|_| DecodeCellsError::Number(at))
    }

    fn signed<T: TryFrom<i128>>(&mut self) -> Result<T, DecodeCellsError> {
        let at = self.at;
        let zigzag = self.varint()?;
        let value = ((zigzag >> 1) as i128) ^ -((zigzag & 1) as i128);
        T::try_from(value).map_err(|_| DecodeCellsError::Number(at))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn partial(count: i64, bounds: Option<(i64, i64)>, users: Option<usize>) -> Partial {
        Partial {
            count,
            sum_micros: count as i128 * 1_000_001,
            min_micros: bounds.map(|b| b.0),
            max_micros: bounds.map(|b| b.1),
            sketch: users.map(|n| {
                let mut sketch = Hll::default();
                for i in 0..n {
                    sketch.insert(&format!("user-{i}"));
                }
                sketch
            }),
        }
    }

    proptest! {
        #[test]
        fn what_is_packed_unpacks_the_same(
            cells in prop::collection::vec(
                (".{0,12}", any::<i64>(), prop::option::of((any::<i64>(), any::<i64>())),
                 prop::option::of(0usize..12_000)),
                0..6,
            )
        ) {
            let cells: Vec<(String, Partial)> = cells
                .into_iter()
                .map(|(dims, count, bounds, users)| (dims, partial(count, bounds, users)))
                .collect();
            let bytes = encode_cells(cells.iter().map(|(d, p)| (d.as_str(), p)));
            prop_assert_eq!(decode_cells(&bytes), Ok(cells));
        }
    }

    #[test]
    fn sections_split_as_they_were_joined() {
        let sections = vec![
            encode_cells([("a", &partial(1, None, None))].into_iter()),
            Vec::new(),
            encode_cells([("b", &partial(2, Some((1, 3)), Some(5)))].into_iter()),
        ];
        let joined = join_sections(&sections);
        let split = split_sections(&joined).expect("splits");
        assert_eq!(
            split,
            sections.iter().map(Vec::as_slice).collect::<Vec<_>>()
        );
        for end in 0..joined.len() {
            assert!(split_sections(&joined[..end]).is_err(), "cut at {end}");
        }
    }

    #[test]
    fn extreme_numbers_come_back() {
        let extreme = Partial {
            count: i64::MIN,
            sum_micros: i128::MIN,
            min_micros: Some(i64::MAX),
            max_micros: Some(-1),
            sketch: None,
        };
        let largest = Partial {
            count: i64::MAX,
            sum_micros: i128::MAX,
            ..Partial::default()
        };
        let cells = vec![("a".to_string(), extreme), ("b".to_string(), largest)];
        let bytes = encode_cells(cells.iter().map(|(d, p)| (d.as_str(), p)));
        assert_eq!(decode_cells(&bytes), Ok(cells));
    }

    #[test]
    fn a_small_sketch_is_packed_sparse_and_a_large_one_dense() {
        let small = partial(1, None, Some(100));
        let large = partial(1, None, Some(50_000));
        let small_bytes = encode_cells([("", &small)].into_iter()).len();
        let large_bytes = encode_cells([("", &large)].into_iter()).len();
        assert!(small_bytes < 100 * 10, "{small_bytes}");
        assert!(large_bytes > 1 << crate::hll::PRECISION, "{large_bytes}");
    }

    #[test]
    fn cells_with_format_1_sketches_are_still_read() {
        // One cell: no dimensions, count 1, sum 0, a legacy sparse sketch with register 5 at 3.
        let bytes = [FORMAT, 1, 0, 2, 0, LEGACY_SPARSE_SKETCH, 1, 5, 3];
        let cells = decode_cells(&bytes).expect("decodes");
        let sketch = cells[0].1.sketch.as_ref().expect("a sketch");
        assert_eq!(sketch.to_bytes()[..2], [1, 14]);
        assert!((sketch.estimate() - 1.0).abs() < 0.01, "{sketch:?}");
    }

    #[test]
    fn a_cut_row_is_refused_not_misread() {
        let bytes = encode_cells([("[\"DE\"]", &partial(3, Some((1, 2)), Some(10)))].into_iter());
        for end in 0..bytes.len() {
            assert!(decode_cells(&bytes[..end]).is_err(), "cut at {end}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert_eq!(
            decode_cells(&longer),
            Err(DecodeCellsError::Truncated(bytes.len()))
        );
        let mut other = bytes;
        other[0] = 9;
        assert_eq!(decode_cells(&other), Err(DecodeCellsError::Format(9)));
    }
}
