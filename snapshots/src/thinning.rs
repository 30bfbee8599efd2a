//! Thinning of in-memory checkpoints, as rr does: dense near the current position,
//! exponentially sparser further away, so that the number kept grows like the log of
//! the history length.
//!
//! Checkpoints are grouped by side (not after / after the current position) and by band
//! of distance `d` from it: band 0 holds `d < min_spacing`, band `b >= 1` holds
//! `min_spacing * 2^(b-1) <= d < min_spacing * 2^b`. Each band is cut into slots aligned
//! on absolute positions, `ceil(min_spacing / per_band) * 2^(b-1)` wide, and each slot
//! keeps only its earliest checkpoint. Because slots are aligned and double in width from
//! one band to the next, a checkpoint that moves outward as execution advances stays the
//! earliest of its (larger) slot or was already dropped: far regions keep one survivor
//! instead of being emptied. The earliest checkpoint overall and the nearest one at or
//! before the current position are always kept. About `per_band + 1` checkpoints survive
//! per band and side, so at most about `2 * (per_band + 1) * (2 + log2(span /
//! min_spacing)) + 2` in all.

/// Decides which checkpoints to drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThinningPolicy {
    /// Distance (in position units) under which checkpoints share the nearest band.
    pub min_spacing: u64,
    /// Checkpoints kept per band, roughly (at least one is).
    pub per_band: u64,
}

impl Default for ThinningPolicy {
    fn default() -> Self {
        ThinningPolicy {
            min_spacing: 1,
            per_band: 2,
        }
    }
}

impl ThinningPolicy {
    /// Indices into `positions` of the checkpoints to drop when execution is at
    /// `current`, in increasing order. Equal positions are thinned like any others.
    pub fn to_drop(&self, positions: &[u64], current: u64) -> Vec<usize> {
        let min_spacing = self.min_spacing.max(1);
        let base_width = min_spacing.div_ceil(self.per_band.max(1));
        let earliest = positions
            .iter()
            .enumerate()
            .min_by_key(|&(index, &position)| (position, index))
            .map(|(index, _)| index);
        let nearest_before = positions
            .iter()
            .enumerate()
            .filter(|&(_, &position)| position <= current)
            .max_by_key(|&(index, &position)| (position, std::cmp::Reverse(index)))
            .map(|(index, _)| index);

        // (after current?, band, slot, position, index): each slot's earliest leads.
        let mut keyed: Vec<(bool, u32, u64, u64, usize)> = positions
            .iter()
            .enumerate()
            .map(|(index, &position)| {
                let scaled = position.abs_diff(current) / min_spacing;
                let band = if scaled == 0 { 0 } else { scaled.ilog2() + 1 };
                let width = base_width
                    .checked_shl(band.saturating_sub(1))
                    .unwrap_or(u64::MAX);
                let width = if width == 0 { u64::MAX } else { width };
                (position > current, band, position / width, position, index)
            })
            .collect();
        keyed.sort_unstable();

        let mut drop = Vec::new();
        let mut slot = None;
        for (after, band, slot_number, _, index) in keyed {
            let first_in_slot = slot != Some((after, band, slot_number));
            slot = Some((after, band, slot_number));
            if !first_in_slot && Some(index) != earliest && Some(index) != nearest_before {
                drop.push(index);
            }
        }
        drop.sort_unstable();
        drop
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_nearby_and_earliest() {
        let policy = ThinningPolicy {
            min_spacing: 10,
            per_band: 1,
        };
        // Current at 100. Band 3 (distance 40..80) has slots 40 wide: 50 and 60 share
        // slot 1 and the earlier stays; 91 and 95 share band 0's slot 9, but 95 is the
        // nearest before the current position; 0 is the earliest.
        let positions = [0, 50, 60, 91, 95, 105];
        let drop = policy.to_drop(&positions, 100);
        assert_eq!(drop, vec![2]);
    }

    #[test]
    fn count_grows_logarithmically() {
        let policy = ThinningPolicy {
            min_spacing: 1,
            per_band: 2,
        };
        let mut positions: Vec<u64> = Vec::new();
        for now in 0..100_000u64 {
            positions.push(now);
            let drop = policy.to_drop(&positions, now);
            for &index in drop.iter().rev() {
                positions.remove(index);
            }
        }
        // (2 + 1) * (2 + 17) + 2 on the one side in use
        assert!(positions.len() <= 59, "kept {}", positions.len());
        assert!(positions.len() >= 17, "kept {}", positions.len());
        assert_eq!(positions[0], 0);
    }
}
