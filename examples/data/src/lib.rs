//! The data bundled with the burn-dp examples, and its one reader: the UCI hand-written digits
//! (`digits.bin`, 1,797 8×8 images with pixels `0..=16`; provenance and layout in this crate's
//! `README.md`).
//!
//! The quickstart, the image-classification example and burn-dp-train's `digits` example read
//! the file through [`Digits::bundled`]; none of them parses it itself.
#![warn(missing_docs)]

use thiserror::Error;

/// The bundled file: `DIGITS01`, the count `n` (u32 little endian), `n × 64` pixel bytes, `n`
/// label bytes.
const DIGITS_BIN: &[u8] = include_bytes!("../digits.bin");
/// The file's magic bytes.
const MAGIC: &[u8; 8] = b"DIGITS01";
/// Bytes before the pixels: the magic and the count.
const HEADER: usize = 12;

/// A digits file that is not what [`Digits::parse`] reads.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum DigitsError {
    /// The file does not start with the magic `DIGITS01` and a count.
    #[error("not a digits file: it must start with `DIGITS01` and a u32 count (convert it as examples/data/README.md shows)")]
    NotDigits,
    /// The file's length does not match its count.
    #[error("digits file of {bytes} bytes for {count} digits: expected {expected} bytes (12 + 65 per digit); the file is truncated or was written with another layout")]
    Length {
        /// The file's length.
        bytes: usize,
        /// The count in the header.
        count: usize,
        /// The length the count implies.
        expected: usize,
    },
}

/// The digits: 8×8 grey images with pixels `0..=16` and labels `0..=9`, in file order.
#[derive(Debug, Clone, PartialEq)]
pub struct Digits {
    /// `len × 64` pixels, row-major per image.
    pixels: Vec<u8>,
    /// `len` labels.
    labels: Vec<u8>,
}

impl Digits {
    /// Side of an image.
    pub const SIDE: usize = 8;
    /// Pixels of an image (`SIDE²`).
    pub const PIXELS: usize = Self::SIDE * Self::SIDE;
    /// The largest pixel value.
    pub const MAX_PIXEL: u8 = 16;
    /// Classes (the digits 0 to 9).
    pub const CLASSES: usize = 10;

    /// The bundled UCI digits (1,797 images).
    pub fn bundled() -> Result<Digits, DigitsError> {
        Self::parse(DIGITS_BIN)
    }

    /// Reads a file in the layout of `digits.bin`.
    pub fn parse(bytes: &[u8]) -> Result<Digits, DigitsError> {
        if bytes.len() < HEADER || &bytes[..8] != MAGIC {
            return Err(DigitsError::NotDigits);
        }
        let count = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize;
        let expected = HEADER + count * (Self::PIXELS + 1);
        if bytes.len() != expected {
            return Err(DigitsError::Length {
                bytes: bytes.len(),
                count,
                expected,
            });
        }
        let (pixels, labels) = bytes[HEADER..].split_at(count * Self::PIXELS);
        Ok(Digits {
            pixels: pixels.to_vec(),
            labels: labels.to_vec(),
        })
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The 64 pixels `0..=16` of image `i`, row-major.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn pixels(&self, i: usize) -> &[u8] {
        &self.pixels[i * Self::PIXELS..(i + 1) * Self::PIXELS]
    }

    /// The 64 pixels of image `i` scaled to `[0, 1]` (divided by 16).
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn scaled(&self, i: usize) -> impl Iterator<Item = f32> + '_ {
        self.pixels(i)
            .iter()
            .map(|p| *p as f32 / Self::MAX_PIXEL as f32)
    }

    /// The label `0..=9` of image `i`.
    ///
    /// # Panics
    /// When `i >= len()`.
    pub fn label(&self, i: usize) -> u8 {
        self.labels[i]
    }

    /// The fixed train / test split of the quickstart and burn-dp-train's example: a permutation by
    /// multiplicative hashing of the index (the same on every machine), its first `len·4/5`
    /// images train (1,437 of the bundled 1,797), the rest test (360).
    pub fn train_test_split(&self) -> (Vec<usize>, Vec<usize>) {
        let n = self.len();
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|i| (*i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 16);
        let test = order.split_off(n * 4 / 5);
        (order, test)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bundled_digits_and_split() {
        let d = Digits::bundled().unwrap();
        assert_eq!(d.len(), 1797);
        assert!((0..d.len()).all(|i| d.label(i) < 10));
        assert!((0..d.len()).all(|i| d.pixels(i).iter().all(|p| *p <= Digits::MAX_PIXEL)));
        let (train, test) = d.train_test_split();
        assert_eq!((train.len(), test.len()), (1437, 360));
        let mut all: Vec<usize> = train.iter().chain(&test).copied().collect();
        all.sort_unstable();
        assert_eq!(all, (0..1797).collect::<Vec<_>>());
        // The split the examples recorded their results with.
        assert_eq!(&train[..4], &[0, 1597, 610, 1220]);
    }

    #[test]
    fn malformed_files_are_refused() {
        assert_eq!(Digits::parse(b"DIGITS0"), Err(DigitsError::NotDigits));
        assert_eq!(
            Digits::parse(b"DIGITS02\0\0\0\0"),
            Err(DigitsError::NotDigits)
        );
        let mut one = b"DIGITS01\x01\0\0\0".to_vec();
        one.extend([0u8; 64]);
        assert!(matches!(
            Digits::parse(&one),
            Err(DigitsError::Length { expected: 77, .. })
        ));
        one.push(7);
        assert_eq!(Digits::parse(&one).unwrap().label(0), 7);
    }
}
