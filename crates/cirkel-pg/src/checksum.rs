//! PostgreSQL data page checksums, checked while a base backup reads pages,
//! so corruption on the primary is reported instead of being backed up
//! silently. The algorithm is PostgreSQL's (`storage/checksum_impl.h`): 32
//! parallel FNV-1a-style lanes over the page as little-endian words, with
//! `pd_checksum` counted as zero, mixed with the block number.

use std::path::Path;

pub const PAGE: usize = 8192;
/// Pages per 1 GiB relation segment file.
const PAGES_PER_SEGMENT: u64 = 131_072;
const LANES: usize = 32;
const FNV_PRIME: u32 = 16_777_619;
const BASE: [u32; LANES] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C, 0xF8D4474F,
    0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB, 0xE58F764B, 0x187636BC,
    0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4, 0x783125BB, 0x6CA8EAA2, 0xE407EAC6,
    0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

#[inline]
fn mix(sum: u32, value: u32) -> u32 {
    let t = sum ^ value;
    t.wrapping_mul(FNV_PRIME) ^ (t >> 17)
}

/// The checksum PostgreSQL stores in `pd_checksum` for this page.
pub fn page_checksum(page: &[u8], block: u32) -> u16 {
    let mut sums = BASE;
    for (i, word) in page.chunks_exact(4).enumerate() {
        // pd_checksum (bytes 8..10) counts as zero: it is the low half of word 2.
        let mut v = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        if i == 2 {
            v &= 0xFFFF_0000;
        }
        sums[i % LANES] = mix(sums[i % LANES], v);
    }
    let mut result = 0u32;
    for s in sums.iter_mut() {
        *s = mix(mix(*s, 0), 0);
        result ^= *s;
    }
    ((result ^ block) % 65535 + 1) as u16
}

/// The page's LSN (`pd_lsn`).
pub fn page_lsn(page: &[u8]) -> u64 {
    let hi = u32::from_le_bytes([page[0], page[1], page[2], page[3]]) as u64;
    let lo = u32::from_le_bytes([page[4], page[5], page[6], page[7]]) as u64;
    (hi << 32) | lo
}

/// For a relation file (`base/<db>/<relfilenode>[_fsm|_vm|_init][.N]` or
/// `global/...`), the block number of its first page; `None` for other files.
pub fn first_block(path: &Path) -> Option<u64> {
    let parent = path.parent()?.file_name()?.to_str()?;
    let grand = path.parent()?.parent()?.file_name()?.to_str()?;
    let in_relation_dir = parent == "global" || (grand == "base" && parent.bytes().all(|b| b.is_ascii_digit()));
    if !in_relation_dir {
        return None;
    }
    let name = path.file_name()?.to_str()?;
    let (stem, segment) = match name.split_once('.') {
        Some((s, n)) => (s, n.parse::<u64>().ok()?),
        None => (name, 0),
    };
    let node = stem
        .strip_suffix("_fsm")
        .or_else(|| stem.strip_suffix("_vm"))
        .or_else(|| stem.strip_suffix("_init"))
        .unwrap_or(stem);
    if node.is_empty() || !node.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(segment * PAGES_PER_SEGMENT)
}

/// Checks the pages of one block read at `offset` of a relation file.
/// Pages that are new (all zeros) or changed after `start_lsn` are skipped:
/// WAL replay restores them. Returns one message per bad page.
pub fn check_block(path: &Path, offset: u64, data: &[u8], start_lsn: u64) -> Vec<String> {
    let Some(first) = first_block(path) else { return Vec::new() };
    let mut bad = Vec::new();
    for (i, page) in data.chunks_exact(PAGE).enumerate() {
        if page.iter().all(|&b| b == 0) || page_lsn(page) >= start_lsn {
            continue;
        }
        let block = first + offset / PAGE as u64 + i as u64;
        let stored = u16::from_le_bytes([page[8], page[9]]);
        let computed = page_checksum(page, block as u32);
        if stored != computed {
            bad.push(format!(
                "{} block {block}: page checksum {stored:#06x}, computed {computed:#06x}",
                path.display()
            ));
        }
    }
    bad
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_files_are_recognised() {
        assert_eq!(first_block(Path::new("/d/base/5/16384")), Some(0));
        assert_eq!(first_block(Path::new("/d/base/5/16384.2")), Some(2 * 131_072));
        assert_eq!(first_block(Path::new("/d/base/5/16384_fsm")), Some(0));
        assert_eq!(first_block(Path::new("/d/global/1262")), Some(0));
        assert_eq!(first_block(Path::new("/d/base/5/PG_VERSION")), None);
        assert_eq!(first_block(Path::new("/d/pg_xact/0000")), None);
    }

    #[test]
    fn a_flipped_bit_changes_the_checksum() {
        let mut page = vec![0u8; PAGE];
        for (i, b) in page.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        let c = page_checksum(&page, 7);
        page[8] ^= 0xFF; // pd_checksum itself does not count
        assert_eq!(page_checksum(&page, 7), c);
        page[4000] ^= 1;
        assert_ne!(page_checksum(&page, 7), c);
        assert_ne!(page_checksum(&page, 8), page_checksum(&page, 7));
    }
}
