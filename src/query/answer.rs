//! An answer on its way to a client: produced batch by batch on the query threads, encoded
//! there for its door (JSON or CSV for `POST /sql`, rows for PostgreSQL), and handed over
//! one chunk at a time.
//!
//! Owns the process's answer budget (`sql.answer_memory`, over both doors): a batch is
//! counted from when the query produces it until its encoded bytes have left for the
//! socket, so a client that reads slowly holds back its own query, never the process's
//! memory. It must never hold a whole answer, and never encode on the caller's threads
//! (those of `serve` receive S-360's pushes).

use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use super::QueryError;

/// The budget's unit: a semaphore counts permits in `u32` per request, and a batch may
/// take more than 4 GiB of them in bytes.
const UNIT: usize = 1024;

/// Memory for answers, shared by every query of the process.
#[derive(Debug, Clone)]
pub struct AnswerBudget {
    units: Arc<Semaphore>,
    bytes: usize,
}

impl AnswerBudget {
    pub fn new(bytes: usize) -> AnswerBudget {
        let units = bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS);
        AnswerBudget {
            units: Arc::new(Semaphore::new(units)),
            bytes,
        }
    }

    /// Waits until `bytes` of the budget are free, and holds them until the result drops.
    /// An amount the whole budget could never hold is refused at once. The budget serves
    /// its waiters in turn; none of them may hold a share while it waits (two that did
    /// could each wait for the other's), which is why [`AnswerMemory::resize`] gives its
    /// share back before it asks for a larger one.
    pub async fn take(&self, bytes: usize) -> Result<AnswerMemory, QueryError> {
        let wanted = self.units_for(bytes)?;
        let permit = self
            .units
            .clone()
            .acquire_many_owned(wanted)
            .await
            .expect("the budget is never closed");
        Ok(AnswerMemory(Some(permit)))
    }

    /// `bytes` of the budget if they are free now; `None` if they are not.
    pub fn try_take(&self, bytes: usize) -> Result<Option<AnswerMemory>, QueryError> {
        let wanted = self.units_for(bytes)?;
        Ok(self
            .units
            .clone()
            .try_acquire_many_owned(wanted)
            .ok()
            .map(|permit| AnswerMemory(Some(permit))))
    }

    fn units_for(&self, bytes: usize) -> Result<u32, QueryError> {
        let units = bytes.div_ceil(UNIT).max(1);
        let refused = || QueryError::AnswerTooLarge {
            bytes,
            budget: self.bytes,
        };
        if units > self.units_total() {
            return Err(refused());
        }
        u32::try_from(units).map_err(|_| refused())
    }

    /// The whole budget, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    fn units_total(&self) -> usize {
        self.bytes.div_ceil(UNIT).clamp(1, Semaphore::MAX_PERMITS)
    }

    /// Bytes of the budget free now, for the logs and tests.
    pub fn free_bytes(&self) -> usize {
        self.units.available_permits() * UNIT
    }
}

/// A share of the answer budget, given back when dropped.
#[derive(Debug)]
pub struct AnswerMemory(Option<OwnedSemaphorePermit>);

impl AnswerMemory {
    /// No share at all.
    pub fn none() -> AnswerMemory {
        AnswerMemory(None)
    }

    /// Resizes this share to `bytes`: gives back what is no longer needed, or gives the
    /// share back and waits for the whole of the new size (never holding part of the
    /// budget while waiting for more).
    pub async fn resize(&mut self, bytes: usize, budget: &AnswerBudget) -> Result<(), QueryError> {
        let wanted = bytes.div_ceil(UNIT).max(1);
        let held = self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits);
        if wanted < held {
            if let Some(permit) = self.0.as_mut() {
                drop(permit.split(held - wanted));
            }
        } else if wanted > held {
            self.0 = None;
            *self = budget.take(bytes).await?;
        }
        Ok(())
    }
}

/// Turns an answer's batches into what its door sends, on the query's threads.
pub trait Encoder: Clone + Send + Sync + 'static {
    type Chunk: Send + 'static;
    /// What goes before the first row (a CSV header, a JSON `[`).
    fn start(&mut self, schema: &SchemaRef) -> Result<Option<Self::Chunk>, QueryError>;
    fn batch(&mut self, batch: &RecordBatch) -> Result<Self::Chunk, QueryError>;
    /// What goes after the last row.
    fn finish(&mut self) -> Result<Option<Self::Chunk>, QueryError>;
    /// The bytes a chunk holds, as the budget counts them.
    fn size(chunk: &Self::Chunk) -> usize;
}

/// A chunk of an answer and its share of the budget: the share is given back when the
/// chunk is dropped, which a door does once the chunk's bytes are on their way.
#[derive(Debug)]
pub struct Held<C> {
    pub chunk: C,
    pub memory: AnswerMemory,
}

/// Why an answer ended before its last chunk, for the consumer that finds the channel
/// closed early (the producer may have been stopped where it could not send anything).
pub type EndReason = Arc<Mutex<Option<QueryError>>>;

/// The rest of an answer whose first batch is known to be good: its chunks arrive through
/// `next`, and it is complete once `next` gives `None` without an error. Dropping it stops
/// the query.
pub struct Answer<C> {
    pub schema: SchemaRef,
    chunks: mpsc::Receiver<Held<C>>,
    ended: EndReason,
    complete: Arc<std::sync::atomic::AtomicBool>,
    /// Stops the producer when the answer is dropped.
    _producer: super::AbortOnDrop<()>,
}

impl<C> Answer<C> {
    pub(super) fn new(
        schema: SchemaRef,
        chunks: mpsc::Receiver<Held<C>>,
        ended: EndReason,
        complete: Arc<std::sync::atomic::AtomicBool>,
        producer: super::AbortOnDrop<()>,
    ) -> Answer<C> {
        Answer {
            schema,
            chunks,
            ended,
            complete,
            _producer: producer,
        }
    }

    /// The next chunk; `None` once the answer is complete; an error when it stopped short.
    pub async fn next(&mut self) -> Option<Result<Held<C>, QueryError>> {
        match self.chunks.recv().await {
            Some(held) => Some(Ok(held)),
            None => self.end(),
        }
    }

    /// As `next`, for a consumer that polls (a body stream).
    pub fn poll_next(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Held<C>, QueryError>>> {
        match self.chunks.poll_recv(cx) {
            std::task::Poll::Ready(Some(held)) => std::task::Poll::Ready(Some(Ok(held))),
            std::task::Poll::Ready(None) => std::task::Poll::Ready(self.end()),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }

    fn end(&mut self) -> Option<Result<Held<C>, QueryError>> {
        if self.complete.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        let reason = self.ended.lock().expect("never poisoned").take();
        // Given once: a consumer that asks again after the error sees the end.
        self.complete
            .store(true, std::sync::atomic::Ordering::Release);
        Some(Err(reason.unwrap_or_else(|| {
            QueryError::Failed(datafusion::error::DataFusionError::Execution(
                "the answer stopped before its end".into(),
            ))
        })))
    }

    /// Every chunk, for a caller that needs the whole answer at once (`datx sql`'s table).
    pub async fn collect(mut self) -> Result<Vec<C>, QueryError> {
        let mut chunks = Vec::new();
        while let Some(held) = self.next().await {
            chunks.push(held?.chunk);
        }
        Ok(chunks)
    }
}

/// Batches as they are, for a caller in its own process (`datx sql`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Batches;

impl Encoder for Batches {
    type Chunk = RecordBatch;

    fn start(&mut self, _schema: &SchemaRef) -> Result<Option<RecordBatch>, QueryError> {
        Ok(None)
    }

    fn batch(&mut self, batch: &RecordBatch) -> Result<RecordBatch, QueryError> {
        Ok(batch.clone())
    }

    fn finish(&mut self) -> Result<Option<RecordBatch>, QueryError> {
        Ok(None)
    }

    fn size(chunk: &RecordBatch) -> usize {
        chunk.get_array_memory_size()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shares_wait_for_the_budget_and_give_it_back_when_dropped() {
        let budget = AnswerBudget::new(10 * UNIT);
        let first = budget.take(6 * UNIT).await.unwrap();
        assert_eq!(budget.free_bytes(), 4 * UNIT);
        // More than is free waits; more than the whole budget is refused at once.
        let waiting = budget.take(5 * UNIT);
        tokio::pin!(waiting);
        assert!(futures::FutureExt::now_or_never(&mut waiting).is_none());
        assert!(budget.take(11 * UNIT).await.is_err());
        drop(first);
        let mut second = waiting.await.unwrap();
        assert_eq!(budget.free_bytes(), 5 * UNIT);
        second.resize(2 * UNIT, &budget).await.unwrap();
        assert_eq!(budget.free_bytes(), 8 * UNIT);
        second.resize(9 * UNIT, &budget).await.unwrap();
        assert_eq!(budget.free_bytes(), UNIT);
        assert!(second.resize(11 * UNIT, &budget).await.is_err());
        drop(second);
        assert_eq!(budget.free_bytes(), 10 * UNIT);
        assert!(budget.try_take(10 * UNIT).unwrap().is_some());
    }

    #[tokio::test]
    async fn two_answers_growing_at_once_never_wait_for_each_other() {
        // Each holds a share and wants one larger than what is free while the other holds
        // its own: giving back before waiting lets both through, one after the other.
        let budget = AnswerBudget::new(10 * UNIT);
        let (mut a, mut b) = (
            budget.take(4 * UNIT).await.unwrap(),
            budget.take(4 * UNIT).await.unwrap(),
        );
        let (grown_a, grown_b) = tokio::join!(
            async {
                a.resize(7 * UNIT, &budget).await.unwrap();
                drop(a);
            },
            async {
                b.resize(7 * UNIT, &budget).await.unwrap();
                drop(b);
            }
        );
        let ((), ()) = (grown_a, grown_b);
        assert_eq!(budget.free_bytes(), 10 * UNIT);
    }
}
