//! Checking an RDB file without loading it: the `REDIS` magic and version,
//! the end-of-file opcode, and the CRC-64 (Jones polynomial, reflected) that
//! Redis appends over everything before it.

/// Facts about a checked RDB file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RdbInfo {
    pub version: u32,
    pub crc64: u64,
}

/// Why an RDB file is not usable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RdbError {
    #[error("not an RDB file (no REDIS magic)")]
    NoMagic,
    #[error("RDB file is truncated ({0} bytes)")]
    Truncated(usize),
    #[error("RDB file does not end with the EOF marker: truncated or damaged")]
    NoEof,
    #[error("RDB checksum mismatch: stored {stored:016x}, computed {computed:016x} (the file is damaged)")]
    Checksum { stored: u64, computed: u64 },
}

const POLY_REFLECTED: u64 = 0x95AC_9329_AC4B_C9B5;

fn table() -> [u64; 256] {
    let mut t = [0u64; 256];
    for (i, slot) in t.iter_mut().enumerate() {
        let mut crc = i as u64;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ POLY_REFLECTED } else { crc >> 1 };
        }
        *slot = crc;
    }
    t
}

/// Redis's CRC-64.
pub fn crc64(data: &[u8]) -> u64 {
    let t = table();
    data.iter().fold(0u64, |crc, &b| t[((crc ^ b as u64) & 0xFF) as usize] ^ (crc >> 8))
}

/// Checks an RDB file held in memory.
pub fn check(data: &[u8]) -> Result<RdbInfo, RdbError> {
    if data.len() < 9 || &data[..5] != b"REDIS" {
        return Err(RdbError::NoMagic);
    }
    let version: u32 = std::str::from_utf8(&data[5..9]).ok().and_then(|v| v.parse().ok()).ok_or(RdbError::NoMagic)?;
    if data.len() < 9 + 1 + 8 {
        return Err(RdbError::Truncated(data.len()));
    }
    let body = &data[..data.len() - 8];
    if body.last() != Some(&0xFF) {
        return Err(RdbError::NoEof);
    }
    let stored = u64::from_le_bytes(data[data.len() - 8..].try_into().map_err(|_| RdbError::Truncated(data.len()))?);
    let computed = crc64(body);
    // A stored zero means the server was configured without checksums.
    if stored != 0 && stored != computed {
        return Err(RdbError::Checksum { stored, computed });
    }
    Ok(RdbInfo { version, crc64: computed })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_matches_redis_check_value() {
        assert_eq!(crc64(b"123456789"), 0xe9c6d914c4b8d9ca);
    }

    #[test]
    fn damaged_files_are_rejected() {
        let mut f = b"REDIS0010".to_vec();
        f.extend_from_slice(&[0xFA, 1, 2, 3, 0xFF]);
        let c = crc64(&f);
        f.extend_from_slice(&c.to_le_bytes());
        assert_eq!(check(&f).unwrap().version, 10);
        let mut bad = f.clone();
        bad[11] ^= 1;
        assert!(matches!(check(&bad), Err(RdbError::Checksum { .. })));
        assert!(check(&f[..f.len() - 3]).is_err());
        assert_eq!(check(b"NOTREDIS00"), Err(RdbError::NoMagic));
    }
}
