//! Writing a batch: every buffer of a batch in as few `writev` calls as
//! the socket allows (tokio's vectored `write_all_buf` over a segmented
//! buffer), so a tab's ready frames leave in one syscall. Never copies a
//! frame.

use bytes::Bytes;
use bytes_utils::SegmentedBuf;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Write all of `out`; it is empty afterwards.
pub async fn write_all<I: AsyncWrite + Unpin>(
    io: &mut I,
    out: &mut SegmentedBuf<Bytes>,
) -> std::io::Result<()> {
    io.write_all_buf(out).await
}
