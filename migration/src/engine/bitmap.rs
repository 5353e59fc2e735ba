//! One bit per guest page: the pages dirtied since the dirty log was last read.

/// A dirty bitmap over `pages` pages, bit `i` of word `i / 64` for page `i`. Bits past the
/// last page are always clear, so `count` and `iter` never report a page that does not exist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirtyBitmap {
    words: Vec<u64>,
    pages: u64,
}

/// Why words could not become a bitmap.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BitmapError {
    /// The words do not cover the pages exactly.
    #[error("a bitmap of {pages} pages needs {expected} 64-bit words, got {got}")]
    WordCount {
        /// Pages the bitmap is for.
        pages: u64,
        /// Words needed.
        expected: usize,
        /// Words given.
        got: usize,
    },
    /// A bit is set for a page past the end.
    #[error("a bitmap of {pages} pages has a bit set for page {page}, past its end")]
    BitPastEnd {
        /// Pages the bitmap is for.
        pages: u64,
        /// The first page past the end whose bit is set.
        page: u64,
    },
}

fn words_for(pages: u64) -> usize {
    pages.div_ceil(64) as usize
}

impl DirtyBitmap {
    /// A clear bitmap of `pages` pages.
    pub fn new(pages: u64) -> Self {
        Self {
            words: vec![0; words_for(pages)],
            pages,
        }
    }

    /// A bitmap of `pages` pages with every bit set.
    pub fn full(pages: u64) -> Self {
        let mut bitmap = Self {
            words: vec![u64::MAX; words_for(pages)],
            pages,
        };
        let tail = pages % 64;
        if let (Some(last), true) = (bitmap.words.last_mut(), tail != 0) {
            *last = (1u64 << tail) - 1;
        }
        bitmap
    }

    /// A bitmap from words as KVM's dirty log lays them out (page `i` is bit `i % 64` of word
    /// `i / 64`). Refused if the word count does not match `pages`, or if a bit past the last
    /// page is set (that would be a page the guest does not have).
    pub fn from_words(words: Vec<u64>, pages: u64) -> Result<Self, BitmapError> {
        let expected = words_for(pages);
        if words.len() != expected {
            return Err(BitmapError::WordCount {
                pages,
                expected,
                got: words.len(),
            });
        }
        let tail = pages % 64;
        if let (Some(&last), true) = (words.last(), tail != 0) {
            let past = last >> tail;
            if past != 0 {
                let page = pages + u64::from(past.trailing_zeros());
                return Err(BitmapError::BitPastEnd { pages, page });
            }
        }
        Ok(Self { words, pages })
    }

    /// The words, page `i` at bit `i % 64` of word `i / 64`.
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The number of pages the bitmap covers (set or not).
    pub fn len(&self) -> u64 {
        self.pages
    }

    /// Whether the bitmap covers no pages.
    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// Marks page `index` dirty. Pages past the end are ignored and answer `false`.
    pub fn set(&mut self, index: u64) -> bool {
        if index >= self.pages {
            return false;
        }
        if let Some(word) = self.words.get_mut((index / 64) as usize) {
            *word |= 1 << (index % 64);
        }
        true
    }

    /// Whether page `index` is dirty (`false` past the end).
    pub fn get(&self, index: u64) -> bool {
        index < self.pages
            && self
                .words
                .get((index / 64) as usize)
                .is_some_and(|w| w & (1 << (index % 64)) != 0)
    }

    /// The number of dirty pages.
    pub fn count(&self) -> u64 {
        self.words.iter().map(|w| u64::from(w.count_ones())).sum()
    }

    /// Adds the pages dirty in `other`. Both must cover the same pages; a smaller `other` adds
    /// what it has, a larger one's extra pages are dropped (the engine checks sizes first).
    pub fn union_with(&mut self, other: &DirtyBitmap) {
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
        let tail = self.pages % 64;
        if let (Some(last), true) = (self.words.last_mut(), tail != 0) {
            *last &= (1u64 << tail) - 1;
        }
    }

    /// The dirty pages, in ascending order.
    pub fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.words.iter().enumerate().flat_map(|(i, &word)| {
            let base = i as u64 * 64;
            SetBits(word).map(move |bit| base + u64::from(bit))
        })
    }
}

/// The set bits of one word, lowest first.
struct SetBits(u64);

impl Iterator for SetBits {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.0 == 0 {
            return None;
        }
        let bit = self.0.trailing_zeros();
        self.0 &= self.0 - 1;
        Some(bit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_get_count_iter() {
        let mut b = DirtyBitmap::new(130);
        assert_eq!(b.len(), 130);
        for i in [0, 63, 64, 129] {
            assert!(b.set(i));
        }
        assert!(!b.set(130), "a page past the end is not set");
        assert_eq!(b.count(), 4);
        assert!(b.get(63) && b.get(64) && !b.get(65) && !b.get(130));
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
    }

    #[test]
    fn full_sets_exactly_the_pages() {
        for pages in [0, 1, 63, 64, 65, 200] {
            let b = DirtyBitmap::full(pages);
            assert_eq!(b.count(), pages, "{pages}");
            assert_eq!(b.iter().count() as u64, pages);
            assert!(DirtyBitmap::from_words(b.words().to_vec(), pages).is_ok());
        }
    }

    #[test]
    fn from_words_refuses_wrong_size_and_bits_past_the_end() {
        assert_eq!(
            DirtyBitmap::from_words(vec![0; 3], 100),
            Err(BitmapError::WordCount {
                pages: 100,
                expected: 2,
                got: 3
            })
        );
        assert_eq!(
            DirtyBitmap::from_words(vec![0, 1 << 40], 100),
            Err(BitmapError::BitPastEnd {
                pages: 100,
                page: 104
            })
        );
        let b = DirtyBitmap::from_words(vec![1, 1 << 35], 100).expect("valid words");
        assert_eq!(b.iter().collect::<Vec<_>>(), vec![0, 99]);
    }

    #[test]
    fn union_adds_pages() {
        let mut a = DirtyBitmap::new(70);
        let mut b = DirtyBitmap::new(70);
        a.set(1);
        b.set(1);
        b.set(69);
        a.union_with(&b);
        assert_eq!(a.iter().collect::<Vec<_>>(), vec![1, 69]);
    }
}
