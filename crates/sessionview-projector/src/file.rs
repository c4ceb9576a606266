//! The NDJSON archive source: one envelope per line, line number = offset, partition 0.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sessionview_store::Store;
use tokio::fs::File;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::ProjectorError;
use crate::source::{Item, Shared, SourceMessage};

/// The source name under which a file's positions are stored.
pub fn source_name(path: &std::path::Path) -> String {
    format!("file:{}", path.display())
}

/// Reads `path` from the stored position and sends its lines; at the end either stops (sending
/// [`Item::End`]) or, with `follow`, waits for the file to grow.
pub(crate) async fn read<S: Store>(
    path: PathBuf,
    store: S,
    shared: Arc<Shared>,
    tx: mpsc::Sender<Item>,
    follow: bool,
    shutdown: CancellationToken,
) -> Result<(), ProjectorError> {
    let source = source_name(&path);
    'restart: loop {
        let next = store.positions(&source).await?.get(&0).copied();
        let epoch = shared.owning().await.assign(0, next);
        let file = File::open(&path).await.map_err(|e| ProjectorError::Io {
            path: path.clone(),
            source: e,
        })?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let start = next.unwrap_or(0);
        info!(path = %path.display(), start_line = start, "reading archive");
        let mut offset: i64 = 0;
        let mut line = Vec::with_capacity(4096);
        loop {
            if !shared.take_reseeks().is_empty() {
                continue 'restart;
            }
            line.clear();
            let n = tokio::select! {
                biased;
                () = shutdown.cancelled() => return Ok(()),
                n = reader.read_until(b'\n', &mut line) => n.map_err(|e| ProjectorError::Io { path: path.clone(), source: e })?,
            };
            if n == 0 || (follow && line.last() != Some(&b'\n')) {
                // End of file (or a line still being written).
                if !follow {
                    let _ = tx.send(Item::End(Ok(()))).await;
                    return Ok(());
                }
                if n > 0 {
                    // Re-read the partial line once the writer finishes it.
                    let pos = -(n as i64);
                    use tokio::io::AsyncSeekExt;
                    reader
                        .seek(std::io::SeekFrom::Current(pos))
                        .await
                        .map_err(|e| ProjectorError::Io {
                            path: path.clone(),
                            source: e,
                        })?;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(50)) => {}
                }
                continue;
            }
            let this = offset;
            offset += 1;
            if this < start {
                continue;
            }
            let trimmed = line.trim_ascii();
            let payload = (!trimmed.is_empty()).then(|| trimmed.to_vec());
            let message = SourceMessage {
                partition: 0,
                offset: this,
                epoch,
                payload,
                timestamp_ms: None,
            };
            if tx.send(Item::Message(message)).await.is_err() {
                return Ok(());
            }
        }
    }
}
