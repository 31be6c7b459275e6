//! Writing a query result, for sync responses and async job files alike.
//!
//! Encoding runs on a blocking thread, fed through a bounded channel: serialising a large
//! result (and the second pass a FITS file makes over its spool) never holds one of the
//! runtime's threads, and a slow sink slows the query down instead of filling memory.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use axum::body::Bytes;
use futures::{Stream, StreamExt};
use meridian_formats::write::ResultWriter;
use tokio::sync::mpsc;

use crate::Metrics;
use crate::error::{Error, Result};

/// Batches handed to the encoder ahead of it: enough to overlap the query with encoding,
/// few enough that memory stays flat.
const BATCHES_AHEAD: usize = 2;

/// Size of one response body chunk.
const CHUNK_BYTES: usize = 256 * 1024;

/// Writes every batch of `stream` with `writer` and finishes it; returns the rows written.
///
/// Stops early when the writer has seen MAXREC overflow. If the stream fails, or this
/// future is dropped (a time limit, a cancelled job), the writer is dropped unfinished:
/// a file result leaves nothing behind, and a response body gets no closing bytes.
pub(crate) async fn write_stream<S, E>(writer: ResultWriter, mut stream: S) -> Result<u64>
where
    S: Stream<Item = std::result::Result<RecordBatch, E>> + Unpin,
    Error: From<E>,
{
    // `Some(None)` marks the end of the stream; a channel closed without it means that the
    // result was abandoned.
    let (tx, mut rx) = mpsc::channel::<Option<RecordBatch>>(BATCHES_AHEAD);
    let encoder = tokio::task::spawn_blocking(move || -> Result<u64> {
        let mut writer = writer;
        loop {
            match rx.blocking_recv() {
                Some(Some(batch)) => {
                    writer.write(&batch)?;
                    if writer.overflowed() {
                        break;
                    }
                }
                Some(None) => break,
                None => {
                    return Err(Error::Internal(
                        "the result was abandoned before its end".into(),
                    ));
                }
            }
        }
        Ok(writer.finish()?)
    });
    let mut pumped: Result<()> = Ok(());
    while let Some(batch) = stream.next().await {
        match batch {
            Ok(b) => {
                if tx.send(Some(b)).await.is_err() {
                    break; // the encoder stopped: MAXREC overflow, or a failed sink
                }
            }
            Err(e) => {
                pumped = Err(e.into());
                break;
            }
        }
    }
    if pumped.is_ok() {
        let _ = tx.send(None).await;
    }
    drop(tx);
    let written = encoder
        .await
        .map_err(|e| Error::Internal(format!("result encoder: {e}")))?;
    pumped?;
    written
}

/// The response body of the chunks `rx` receives (from a [`BodySink`] and the task that
/// feeds it), in order; an error ends it as a broken transfer.
pub(crate) fn body(rx: mpsc::Receiver<std::io::Result<Bytes>>) -> axum::body::Body {
    axum::body::Body::from_stream(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    }))
}

/// A `Write` whose bytes become the chunks of a response body. A full chunk waits for room
/// in the body's channel, so the encoder never runs ahead of the client by more than a
/// few chunks. Only for blocking threads (see [`write_stream`]).
#[derive(Clone)]
pub(crate) struct BodySink {
    pending: Arc<Mutex<Vec<u8>>>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    metrics: Arc<Metrics>,
}

impl BodySink {
    pub(crate) fn new(tx: mpsc::Sender<std::io::Result<Bytes>>, metrics: Arc<Metrics>) -> Self {
        Self {
            pending: Arc::default(),
            tx,
            metrics,
        }
    }

    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.pending.lock().expect("body sink"))
    }

    /// Sends what is left, after the writer has finished, from a blocking thread.
    pub(crate) fn send_rest_blocking(&self) {
        let rest = self.take();
        if !rest.is_empty() {
            self.metrics.add_bytes_out(rest.len() as u64);
            let _ = self.tx.blocking_send(Ok(Bytes::from(rest)));
        }
    }

    /// Sends what is left, after the writer has finished.
    pub(crate) async fn send_rest(&self) {
        let rest = self.take();
        if !rest.is_empty() {
            self.metrics.add_bytes_out(rest.len() as u64);
            let _ = self.tx.send(Ok(Bytes::from(rest))).await;
        }
    }
}

impl Write for BodySink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let full = {
            let mut pending = self.pending.lock().expect("body sink");
            pending.extend_from_slice(buf);
            if pending.len() < CHUNK_BYTES {
                return Ok(buf.len());
            }
            std::mem::replace(&mut *pending, Vec::with_capacity(CHUNK_BYTES))
        };
        self.metrics.add_bytes_out(full.len() as u64);
        self.tx.blocking_send(Ok(Bytes::from(full))).map_err(|_| {
            std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
        })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
