//! Dirty page sets: what the caller says about its memory, and the bitmap used inside.
//!
//! Dirty sets are validated strictly (exact bitmap length, every gfn in range): a dirty
//! set that silently lost pages would make snapshots restore stale memory.

use crate::{Result, SnapshotError, SnapshotId};

/// Pages written since some snapshot.
#[derive(Debug, Clone, Copy)]
pub enum DirtyPages<'a> {
    /// KVM dirty-log layout: bit `i` of the bitmap (word `i / 64`, LSB first) is page
    /// `i`. Must have exactly `ceil(pages / 64)` words, with no bit set past the last page.
    Bitmap(&'a [u64]),
    /// Page numbers in any order; duplicates are fine.
    Gfns(&'a [u64]),
}

impl DirtyPages<'_> {
    /// No page written.
    pub const NONE: DirtyPages<'static> = DirtyPages::Gfns(&[]);
}

/// What a memory buffer holds, relative to a store.
#[derive(Debug, Clone, Copy)]
pub enum MemoryState<'a> {
    /// Anything: every page must be considered changed.
    Unknown,
    /// The memory of `snapshot`, then the `dirty` pages were written.
    At {
        snapshot: SnapshotId,
        dirty: DirtyPages<'a>,
    },
    /// All zero (as a fresh anonymous mapping is), then the `dirty` pages were written.
    /// A snapshot taken from this state is a full one that reads only those pages, so
    /// that a large, mostly untouched memory is not scanned page by page.
    ZeroExcept(DirtyPages<'a>),
}

/// A set of page numbers as a bitmap, with a count of members.
#[derive(Debug, Clone)]
pub(crate) struct PageSet {
    words: Vec<u64>,
    page_count: u32,
    len: usize,
}

impl PageSet {
    pub(crate) fn new(page_count: u32) -> Self {
        PageSet {
            words: vec![0; (page_count as usize).div_ceil(64)],
            page_count,
            len: 0,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Adds `gfn`; returns whether it was new. `gfn` must be below the page count.
    pub(crate) fn insert(&mut self, gfn: u32) -> bool {
        let (word, bit) = (gfn as usize / 64, 1u64 << (gfn % 64));
        let Some(slot) = self.words.get_mut(word) else {
            return false;
        };
        let new = *slot & bit == 0;
        *slot |= bit;
        self.len += usize::from(new);
        new
    }

    /// Removes `gfn`; returns whether it was a member.
    pub(crate) fn remove(&mut self, gfn: u32) -> bool {
        let (word, bit) = (gfn as usize / 64, 1u64 << (gfn % 64));
        let Some(slot) = self.words.get_mut(word) else {
            return false;
        };
        let present = *slot & bit != 0;
        *slot &= !bit;
        self.len -= usize::from(present);
        present
    }

    /// Adds the caller's dirty pages, validating them.
    pub(crate) fn add_dirty(&mut self, dirty: &DirtyPages<'_>) -> Result<()> {
        match *dirty {
            DirtyPages::Bitmap(bitmap) => {
                if bitmap.len() != self.words.len() {
                    return Err(SnapshotError::DirtyBitmapLength {
                        expected: self.words.len(),
                        actual: bitmap.len(),
                    });
                }
                let tail_bits = self.page_count % 64;
                if let (Some(&last), true) = (bitmap.last(), tail_bits != 0) {
                    let beyond = last & !((1u64 << tail_bits) - 1);
                    if beyond != 0 {
                        let gfn =
                            (bitmap.len() as u64 - 1) * 64 + u64::from(beyond.trailing_zeros());
                        return Err(self.out_of_range(gfn));
                    }
                }
                let mut len = 0;
                for (word, &bits) in self.words.iter_mut().zip(bitmap) {
                    *word |= bits;
                    len += word.count_ones() as usize;
                }
                self.len = len;
            }
            DirtyPages::Gfns(gfns) => {
                for &gfn in gfns {
                    match u32::try_from(gfn) {
                        Ok(page) if page < self.page_count => {
                            self.insert(page);
                        }
                        _ => return Err(self.out_of_range(gfn)),
                    }
                }
            }
        }
        Ok(())
    }

    fn out_of_range(&self, gfn: u64) -> SnapshotError {
        SnapshotError::DirtyPageOutOfRange {
            gfn,
            page_count: self.page_count,
        }
    }

    /// Members in increasing order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        set_bits(&self.words, false)
    }

    /// Pages below the page count that are not members, in increasing order.
    pub(crate) fn iter_absent(&self) -> impl Iterator<Item = u32> + '_ {
        let page_count = self.page_count;
        set_bits(&self.words, true).take_while(move |&gfn| gfn < page_count)
    }
}

/// Positions of the set (or, with `invert`, clear) bits of `words`, in increasing order.
fn set_bits(words: &[u64], invert: bool) -> impl Iterator<Item = u32> + '_ {
    words.iter().enumerate().flat_map(move |(index, &word)| {
        let mut bits = if invert { !word } else { word };
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let bit = bits.trailing_zeros();
            bits &= bits - 1;
            Some(index as u32 * 64 + bit)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_and_gfns_agree() {
        let mut from_bitmap = PageSet::new(70);
        from_bitmap
            .add_dirty(&DirtyPages::Bitmap(&[0b1010, 1 << 5]))
            .unwrap();
        let mut from_gfns = PageSet::new(70);
        from_gfns
            .add_dirty(&DirtyPages::Gfns(&[69, 1, 3, 3]))
            .unwrap();
        assert_eq!(from_bitmap.iter().collect::<Vec<_>>(), vec![1, 3, 69]);
        assert_eq!(from_gfns.iter().collect::<Vec<_>>(), vec![1, 3, 69]);
        assert_eq!(from_bitmap.len(), 3);
        assert_eq!(from_gfns.len(), 3);
        assert_eq!(from_gfns.iter_absent().count(), 67);
    }

    #[test]
    fn bad_dirty_sets_are_refused() {
        let mut set = PageSet::new(70);
        assert!(set.add_dirty(&DirtyPages::Bitmap(&[0])).is_err());
        assert!(set.add_dirty(&DirtyPages::Bitmap(&[0, 1 << 6])).is_err());
        assert!(set.add_dirty(&DirtyPages::Gfns(&[70])).is_err());
        assert!(set.add_dirty(&DirtyPages::Gfns(&[u64::MAX])).is_err());
    }
}
