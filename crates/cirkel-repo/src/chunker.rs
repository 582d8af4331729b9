//! The content-defined chunker every file and stream goes through: the
//! repository's sizes, seeded with its key so that chunk boundaries reveal
//! nothing about the content. It lives with the repository because the
//! sizes and the seed are the repository's, whatever source is chunked.

use std::io::Read;

use crate::ChunkerParams;

/// Chunks `reader` with the repository's `chunker` sizes and `seed`.
pub fn content_defined<R: Read>(reader: R, chunker: ChunkerParams, seed: u64) -> fastcdc::v2020::StreamCDC<R> {
    fastcdc::v2020::StreamCDC::with_level_and_seed(
        reader,
        chunker.min as usize,
        chunker.avg as usize,
        chunker.max as usize,
        fastcdc::v2020::Normalization::Level1,
        seed,
    )
}
