//! A small seeded mutator for the tests' short runs: the kinds of change libFuzzer makes
//! (bit flips, interesting values, inserted, deleted, duplicated and spliced ranges,
//! dictionary words), without coverage feedback, repeatable from its seed. Long runs use
//! libFuzzer itself (`scripts/fuzz.sh`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Values that often sit on a boundary.
const INTERESTING: &[&[u8]] = &[
    b"\x00",
    b"\xff",
    b"\x7f",
    b"\x80",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff",
    b"\x7f\xff\xff\xff",
    b"\x80\x00\x00\x00",
    b"-1",
    b"0",
    b"1e309",
    b"NaN",
    b"-0",
    b"''",
    b"\"",
    b"\\",
    b"%",
    b"\r\n",
    b"\xc3\x28",
    b"\xf0\x9f\x98\x80",
];

/// Repeatable mutations of a set of seeds.
pub struct Mutator {
    rng: ChaCha8Rng,
    words: Vec<Vec<u8>>,
    max_len: usize,
}

impl Mutator {
    /// A mutator seeded with `seed`, inserting `words` among its changes, making inputs of
    /// at most `max_len` bytes.
    pub fn new(seed: u64, words: &[String], max_len: usize) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            words: words.iter().map(|w| w.as_bytes().to_vec()).collect(),
            max_len,
        }
    }

    /// A mutation of `input`: one to eight changes, `other` as the source of splices.
    pub fn mutate(&mut self, input: &[u8], other: &[u8]) -> Vec<u8> {
        let mut out = input.to_vec();
        let changes = self.rng.random_range(1..=8);
        for _ in 0..changes {
            self.change(&mut out, other);
        }
        out.truncate(self.max_len);
        out
    }

    fn position(&mut self, len: usize) -> usize {
        if len == 0 {
            0
        } else {
            self.rng.random_range(0..=len)
        }
    }

    fn change(&mut self, out: &mut Vec<u8>, other: &[u8]) {
        let len = out.len();
        match self.rng.random_range(0..9) {
            // Flip a bit.
            0 if len > 0 => {
                let i = self.rng.random_range(0..len);
                out[i] ^= 1 << self.rng.random_range(0..8);
            }
            // Set a byte.
            1 if len > 0 => {
                let i = self.rng.random_range(0..len);
                out[i] = self.rng.random();
            }
            // Overwrite with an interesting value.
            2 => {
                let v = INTERESTING[self.rng.random_range(0..INTERESTING.len())];
                let i = self.position(len.saturating_sub(v.len()));
                let end = (i + v.len()).min(len);
                out.splice(i..end, v.iter().copied());
            }
            // Delete a range.
            3 if len > 0 => {
                let i = self.rng.random_range(0..len);
                let n = self.rng.random_range(1..=(len - i).min(64));
                out.drain(i..i + n);
            }
            // Duplicate a range.
            4 if len > 0 => {
                let i = self.rng.random_range(0..len);
                let n = self.rng.random_range(1..=(len - i).min(256));
                let copy = out[i..i + n].to_vec();
                let at = self.position(len);
                out.splice(at..at, copy);
            }
            // Splice in a range of another seed.
            5 if !other.is_empty() => {
                let i = self.rng.random_range(0..other.len());
                let n = self.rng.random_range(1..=(other.len() - i).min(512));
                let at = self.position(len);
                let end = if self.rng.random() {
                    at
                } else {
                    (at + n).min(len)
                };
                out.splice(at..end, other[i..i + n].iter().copied());
            }
            // Insert a dictionary word.
            6 if !self.words.is_empty() => {
                let w = self.words[self.rng.random_range(0..self.words.len())].clone();
                let at = self.position(len);
                out.splice(at..at, w);
            }
            // Cut short.
            7 if len > 0 => {
                let at = self.rng.random_range(0..len);
                out.truncate(at);
            }
            // Change a number written in ASCII.
            _ => {
                if let Some(i) = (0..len).find(|&i| out[i].is_ascii_digit()) {
                    let start = self.position(len - i) + i;
                    if let Some(j) = (start.min(len)..len).find(|&j| out[j].is_ascii_digit()) {
                        let v = [
                            "0",
                            "-1",
                            "99999999999999999999",
                            "1e-320",
                            "360",
                            "-91",
                            "0.5",
                        ][self.rng.random_range(0..7)];
                        out.splice(j..j + 1, v.bytes());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_mutations_within_the_length() {
        let words = vec!["SELECT".to_string()];
        let mut a = Mutator::new(7, &words, 40);
        let mut b = Mutator::new(7, &words, 40);
        let mut changed = 0;
        for _ in 0..200 {
            let x = a.mutate(b"SELECT ra FROM fuzz WHERE dec > 10", b"other 123");
            assert_eq!(
                x,
                b.mutate(b"SELECT ra FROM fuzz WHERE dec > 10", b"other 123")
            );
            assert!(x.len() <= 40);
            changed += usize::from(x != b"SELECT ra FROM fuzz WHERE dec > 10");
        }
        assert!(
            changed > 150,
            "only {changed} of 200 mutations changed the input"
        );
    }
}
