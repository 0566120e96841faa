//! The random numbers the tests and benchmarks draw their tables and addresses from.

/// splitmix64 (Steele, Lea and Flood, "Fast splittable pseudorandom number generators",
/// OOPSLA 2014; the constants of Vigna's `splitmix64.c`): deterministic, so every run checks
/// and measures the same tables. Not for anything that must be unpredictable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self(seed)
    }

    pub const fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`, for `n` far below 2^32: the high 32 bits scaled by `n`
    /// (multiply and shift, no division).
    ///
    /// # Panics
    ///
    /// In debug builds, when `n` is 2^32 or more (the product overflows).
    pub fn below(&mut self, n: usize) -> usize {
        let n = u64::try_from(n).expect("usize fits u64");
        usize::try_from(((self.next_u64() >> 32) * n) >> 32).expect("below n")
    }

    /// [`Self::next_u64`] modulo `n`: slightly biased towards small values when `n` does not
    /// divide 2^64, which the index tests do not mind; they have drawn their tables so since
    /// they were written.
    ///
    /// # Panics
    ///
    /// When `n` is 0.
    pub const fn next_mod(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// One of `choices`, each as likely as its weight.
    ///
    /// # Panics
    ///
    /// When `choices` is empty or its weights add up to 0.
    pub fn weighted<T: Copy>(&mut self, choices: &[(u32, T)]) -> T {
        let total: u32 = choices.iter().map(|(weight, _)| weight).sum();
        let mut pick = u32::try_from(self.below(total as usize)).expect("below total");
        for &(weight, value) in choices {
            if pick < weight {
                return value;
            }
            pick -= weight;
        }
        choices[choices.len() - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::Rng;

    /// The first outputs of Vigna's `splitmix64.c` seeded with 1234567, the reference's own
    /// check values: the sequence every table was drawn from so far.
    #[test]
    fn draws_the_reference_sequence() {
        let mut rng = Rng::new(1_234_567);
        let drawn = [(); 5].map(|()| rng.next_u64());
        assert_eq!(
            drawn,
            [
                6_457_827_717_110_365_317,
                3_203_168_211_198_807_973,
                9_817_491_932_198_370_423,
                4_593_380_528_125_082_431,
                16_408_922_859_458_223_821,
            ]
        );
    }

    #[test]
    fn draws_in_range() {
        let mut rng = Rng::new(7);
        for n in [1, 2, 3, 300, 60_000] {
            assert!((0..100).all(|_| rng.below(n) < n), "below({n})");
            let n = n as u64;
            assert!((0..100).all(|_| rng.next_mod(n) < n), "next_mod({n})");
        }
        let picks = [(); 1000].map(|()| rng.weighted(&[(1, 'a'), (0, 'b'), (3, 'c')]));
        assert!(!picks.contains(&'b'), "weight 0 is never picked");
        assert!(picks.contains(&'a') && picks.contains(&'c'));
    }
}
