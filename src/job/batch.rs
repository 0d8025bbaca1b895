//! Client-side batching: a shard gathers the ModelInfer inputs of several jobs
//! of one class into one call, and hands each job its share of the answer.
//!
//! One [`Batcher`] per class and shard, in the class's route: plain `Cell`s
//! and `RefCell`s, no lock, no task of its own. The rules:
//!
//! - **Rows.** A job's inputs must share a first dimension of at least 1 —
//!   its rows (1 for the usual KServe `[1, …]` device tensor). A job whose
//!   inputs have none, or disagree on it, fails alone (`model contract:
//!   batching needs …`), before any call.
//! - **Gathering.** Jobs whose inputs have the same names, datatypes and
//!   dimensions after the first (the same *layout*) join the same batch; a
//!   job of another layout starts a batch of its own beside it. Each input
//!   is stacked along its first dimension in the order the jobs joined:
//!   fixed-size datatypes and BYTES (whole length-prefixed elements) alike
//!   are the jobs' bytes one after the other.
//! - **Sending.** A batch goes out as soon as it holds `max_batch` rows (a
//!   job that would take it past that sends it and starts the next), when
//!   `linger` has passed since its first job joined, or when its earliest
//!   deadline is `linger` away, whichever comes first; with a linger of 0,
//!   it takes the jobs that are ready in the same executor round. The first
//!   job of a batch drives it (waits, sends, splits); the others wait for
//!   their share. When the shard stops, [`Batcher::flush`] sends what is
//!   gathering at once.
//! - **The call** is one ModelInfer with the class's model, parameters and
//!   requested outputs, under the batch's earliest deadline; it is retried,
//!   hedged and counted in the retry budget as one call. Every job of the
//!   batch counts its attempts as its own (a job's `attempts` are its
//!   fetch's and the batch's) and names the replica that answered; the
//!   batch's retries go to the metrics once, with its first job. With
//!   `request_id = true` its `id` is the jobs' `<device>@<tick>`,
//!   comma-separated, in row order.
//! - **Splitting.** Every output's first dimension must be the batch's rows
//!   (else every job fails: `batched output "OUTPUT0" has shape [3, 2] for a
//!   batch of 4`); each job gets its rows of each output, a slice of the
//!   received buffer (no copy), which the job then checks as an unbatched
//!   answer is checked. A call that failed fails every job of the batch with
//!   its reason.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use bytes::BytesMut;

use super::{bad_answer, broken_contract, call, ClassRoute, Method, ModelInputs, Tally};
use crate::config::Batching;
use crate::error::{ErrorKind, JobError, Stage};
use crate::proto::inference::model_infer_request::InferInputTensor;
use crate::proto::inference::{ModelInferRequest, ModelInferResponse};
use crate::record::Output;
use crate::runtime;
use crate::tensor;

/// A class's batcher on one shard: the batches gathering now.
pub struct Batcher {
    /// Most rows one call carries (`max_batch`).
    max_rows: usize,
    /// How long a batch waits for more jobs after its first.
    linger: Duration,
    /// The batches gathering, one per input layout (almost always one).
    open: RefCell<Vec<Rc<Gathering>>>,
}

/// One batch while it gathers and until its driver takes it.
struct Gathering {
    /// Rows gathered so far.
    rows: Cell<usize>,
    /// When it goes out unless it fills before.
    send_at: Cell<Instant>,
    /// The earliest deadline of its jobs: the call's.
    deadline: Cell<Instant>,
    /// Its jobs in the order they joined, which is the order of the rows; the
    /// first one's inputs give the batch's layout.
    members: RefCell<Vec<Member>>,
    /// Set when it must go out now: full, or the shard stops.
    sealed: Cell<bool>,
    /// Set with a wake of the driver: something changed (sealed, an earlier
    /// send time) that it must look at.
    nudged: Cell<bool>,
    /// The driver while it waits.
    driver: Cell<Option<Waker>>,
}

/// One job in a batch.
struct Member {
    /// Its checked inputs, stacked into the request.
    inputs: ModelInputs,
    /// Its rows: the first dimension its inputs share.
    rows: usize,
    /// `<device>@<tick>` for the request's `id` (empty without `request_id`).
    id: String,
    /// Where its share goes; taken when answered, so dropping a member that
    /// was never answered answers it with an error instead (no job waits
    /// forever).
    slot: Option<Rc<Slot>>,
}

/// Where a job's share of the answer is left for it.
#[derive(Default)]
struct Slot {
    /// The share, once the batch has been answered.
    answer: Cell<Option<Answer>>,
    /// The job while it waits.
    waker: Cell<Option<Waker>>,
}

/// One job's share of a batch's answer.
struct Answer {
    /// Its rows of every output, or why the batch failed.
    outputs: Result<Vec<Output>, JobError>,
    /// Attempts the batch's call made (retries and hedges included).
    attempts: u16,
    /// The replica whose answer ended the call.
    compute_node: Option<u16>,
    /// The call's retries, for the first job only: counted once.
    retries: u32,
}

impl Batcher {
    pub fn new(batching: &Batching) -> Batcher {
        Batcher {
            max_rows: batching.max_batch.max(1),
            linger: batching.linger,
            open: RefCell::new(Vec::new()),
        }
    }

    /// Sends every batch gathering now without waiting for more: the shard
    /// stops. Jobs that join later gather as usual (for at most the linger).
    pub fn flush(&self) {
        for batch in self.open.borrow_mut().drain(..) {
            batch.seal();
        }
    }

    /// The ModelInfer of one job's `inputs` as part of a batch: its share of
    /// the answer (not yet checked against the class), or why it failed.
    pub(super) async fn infer(
        &self,
        route: &ClassRoute,
        device_id: &str,
        tick_ms: i64,
        inputs: ModelInputs,
        deadline: Instant,
        tally: &mut Tally,
    ) -> Result<Vec<Output>, JobError> {
        let rows = rows(&inputs.tensors).map_err(|detail| broken_contract(route, detail))?;
        let slot = Rc::new(Slot::default());
        let member = Member {
            inputs,
            rows,
            id: if route.request_id {
                format!("{device_id}@{tick_ms}")
            } else {
                String::new()
            },
            slot: Some(slot.clone()),
        };
        if let Some(batch) = self.join(member, deadline, Instant::now()) {
            self.drive(route, &batch).await;
        }
        let answer = std::future::poll_fn(|cx| match slot.answer.take() {
            Some(answer) => Poll::Ready(answer),
            None => {
                slot.waker.set(Some(cx.waker().clone()));
                Poll::Pending
            }
        })
        .await;
        tally.attempts = tally.attempts.saturating_add(answer.attempts);
        tally.retries += answer.retries;
        tally.compute_node = answer.compute_node;
        answer.outputs
    }

    /// Puts `member` into the gathering batch of its layout, or into a new
    /// one, which it then drives (returned).
    fn join(&self, member: Member, deadline: Instant, now: Instant) -> Option<Rc<Gathering>> {
        let mut open = self.open.borrow_mut();
        let found = open.iter().position(|batch| {
            let members = batch.members.borrow();
            members
                .first()
                .is_some_and(|first| same_layout(&first.inputs.tensors, &member.inputs.tensors))
        });
        if let Some(index) = found {
            let batch = &open[index];
            if batch.rows.get() + member.rows <= self.max_rows {
                batch.add(member, deadline, self.linger);
                if batch.rows.get() >= self.max_rows {
                    open.swap_remove(index).seal();
                }
                return None;
            }
            // No room for this job: that batch goes now, this one starts the next.
            open.swap_remove(index).seal();
        }
        let batch = Rc::new(Gathering::new(member, deadline, now, self.linger));
        if batch.rows.get() >= self.max_rows {
            batch.sealed.set(true);
        } else {
            open.push(batch.clone());
        }
        Some(batch)
    }

    /// Waits until `batch` is to go, then sends it and answers its jobs.
    async fn drive(&self, route: &ClassRoute, batch: &Rc<Gathering>) {
        if self.linger.is_zero() && !batch.sealed.get() {
            // Let the jobs ready in this round join before it goes.
            runtime::yield_now().await;
        }
        loop {
            if batch.sealed.get() {
                break;
            }
            let send_at = batch.send_at.get();
            if Instant::now() >= send_at {
                break;
            }
            let nudged = std::future::poll_fn(|cx| {
                if batch.nudged.take() {
                    Poll::Ready(())
                } else {
                    batch.driver.set(Some(cx.waker().clone()));
                    Poll::Pending
                }
            });
            // Woken by a nudge or by the timer, which may fire a little
            // early: the top of the loop looks at the clock again.
            let _ = runtime::until_deadline(send_at, nudged).await;
        }
        self.open
            .borrow_mut()
            .retain(|gathering| !Rc::ptr_eq(gathering, batch));
        batch.sealed.set(true);
        let members = batch.members.take();
        send(route, members, batch.rows.get(), batch.deadline.get()).await;
    }
}

impl Gathering {
    fn new(first: Member, deadline: Instant, now: Instant, linger: Duration) -> Gathering {
        Gathering {
            rows: Cell::new(first.rows),
            send_at: Cell::new(send_time(now + linger, deadline, linger, now)),
            deadline: Cell::new(deadline),
            members: RefCell::new(vec![first]),
            sealed: Cell::new(false),
            nudged: Cell::new(false),
            driver: Cell::new(None),
        }
    }

    /// Adds a job; its deadline may bring the send time forward.
    fn add(&self, member: Member, deadline: Instant, linger: Duration) {
        self.rows.set(self.rows.get() + member.rows);
        self.members.borrow_mut().push(member);
        if deadline < self.deadline.get() {
            self.deadline.set(deadline);
            let send_at = send_time(self.send_at.get(), deadline, linger, Instant::now());
            if send_at < self.send_at.get() {
                self.send_at.set(send_at);
                self.nudge();
            }
        }
    }

    /// It must go now.
    fn seal(&self) {
        self.sealed.set(true);
        self.nudge();
    }

    fn nudge(&self) {
        self.nudged.set(true);
        if let Some(driver) = self.driver.take() {
            driver.wake();
        }
    }
}

/// When a batch goes at the latest: at `planned`, or while its earliest
/// `deadline` is still `linger` away, but not before `now`.
fn send_time(planned: Instant, deadline: Instant, linger: Duration, now: Instant) -> Instant {
    let by_deadline = deadline.checked_sub(linger).unwrap_or(now);
    planned.min(by_deadline).max(now)
}

impl Member {
    fn answer(&mut self, answer: Answer) {
        if let Some(slot) = self.slot.take() {
            slot.answer.set(Some(answer));
            if let Some(waker) = slot.waker.take() {
                waker.wake();
            }
        }
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        // Only when the batch was dropped unsent (its driver's shard stopped
        // under it): the job still ends, with a reason.
        if self.slot.is_none() {
            return;
        }
        self.answer(Answer {
            outputs: Err(JobError::new(
                Stage::Infer,
                ErrorKind::NoReplica("the batch was dropped unsent: its shard stopped"),
            )),
            attempts: 0,
            compute_node: None,
            retries: 0,
        });
    }
}

/// The rows of one job: the first dimension its inputs share, at least 1.
fn rows(inputs: &[InferInputTensor]) -> Result<usize, String> {
    let mut rows: Option<(i64, &str)> = None;
    for input in inputs {
        let Some(&first) = input.shape.first() else {
            return Err(format!(
                "input {:?} is {} [] (a scalar): batching ([classes.batching]) needs a first, \
                 batch dimension",
                input.name, input.datatype
            ));
        };
        if first < 1 {
            return Err(format!(
                "input {:?} has shape {:?}: batching ([classes.batching]) needs at least one \
                 row in the first dimension",
                input.name, input.shape
            ));
        }
        match rows {
            None => rows = Some((first, &input.name)),
            Some((known, name)) if known != first => {
                return Err(format!(
                    "inputs {name:?} and {:?} have {known} and {first} rows: batching \
                     ([classes.batching]) needs a device's inputs to share their first dimension",
                    input.name
                ));
            }
            Some(_) => {}
        }
    }
    let (rows, _) = rows.ok_or_else(|| "no input to batch".to_string())?;
    usize::try_from(rows).map_err(|_| format!("{rows} rows"))
}

/// Whether two jobs' inputs stack: the same names, datatypes and dimensions
/// after the first, in the same order.
fn same_layout(left: &[InferInputTensor], right: &[InferInputTensor]) -> bool {
    left.len() == right.len()
        && left.iter().zip(right).all(|(a, b)| {
            a.name == b.name && a.datatype == b.datatype && a.shape.get(1..) == b.shape.get(1..)
        })
}

/// Sends one batch of `rows` rows under `deadline` and answers each of its
/// `members` with its share.
async fn send(route: &ClassRoute, mut members: Vec<Member>, rows: usize, deadline: Instant) {
    let request = request(route, &members, rows);
    let mut tally = Tally::default();
    let response =
        call::<_, ModelInferResponse>(Method::Infer, &request, deadline, route, &mut tally).await;
    drop(request);
    let mut shares = match response.and_then(|response| split(response, &members, rows)) {
        Ok(shares) => shares.into_iter().map(Ok).collect(),
        Err(error) => vec![Err(error); members.len()],
    };
    for (index, (member, outputs)) in members.iter_mut().zip(shares.drain(..)).enumerate() {
        member.answer(Answer {
            outputs,
            attempts: tally.attempts,
            compute_node: tally.compute_node,
            retries: if index == 0 { tally.retries } else { 0 },
        });
    }
}

/// The batch's ModelInfer request: each input stacked along its first
/// dimension, in the members' order; one member's inputs go as they are.
fn request(route: &ClassRoute, members: &[Member], rows: usize) -> ModelInferRequest {
    let layout: &[InferInputTensor] = members.first().map_or(&[], |first| &first.inputs.tensors);
    let mut inputs = Vec::with_capacity(layout.len());
    let mut raw = Vec::with_capacity(layout.len());
    for (index, tensor) in layout.iter().enumerate() {
        let mut shape = tensor.shape.clone();
        if let Some(first) = shape.first_mut() {
            *first = rows as i64;
        }
        inputs.push(InferInputTensor {
            name: tensor.name.clone(),
            datatype: tensor.datatype.clone(),
            shape,
            ..Default::default()
        });
        if let [only] = members {
            raw.push(only.inputs.raw[index].clone());
            continue;
        }
        let len = members
            .iter()
            .map(|member| member.inputs.raw[index].len())
            .sum();
        let mut stacked = BytesMut::with_capacity(len);
        for member in members {
            stacked.extend_from_slice(&member.inputs.raw[index]);
        }
        raw.push(stacked.freeze());
    }
    let id = if route.request_id {
        let ids: Vec<&str> = members.iter().map(|member| member.id.as_str()).collect();
        ids.join(",")
    } else {
        String::new()
    };
    ModelInferRequest {
        model_name: route.model.clone(),
        model_version: route.model_version.clone(),
        id,
        parameters: route.parameters.clone(),
        inputs,
        outputs: route.requested_outputs.clone(),
        raw_input_contents: raw,
    }
}

/// Each member's rows of every output of the batch's answer.
fn split(
    response: ModelInferResponse,
    members: &[Member],
    rows: usize,
) -> Result<Vec<Vec<Output>>, JobError> {
    let outputs = tensor::outputs(response).map_err(bad_answer)?;
    for output in &outputs {
        if output.shape.first() != Some(&(rows as i64)) {
            return Err(bad_answer(format!(
                "batched output {:?} has shape {:?} for a batch of {rows}",
                output.name, output.shape
            )));
        }
    }
    if members.len() == 1 {
        return Ok(vec![outputs]);
    }
    let mut shares: Vec<Vec<Output>> = members
        .iter()
        .map(|_| Vec::with_capacity(outputs.len()))
        .collect();
    for output in &outputs {
        let offsets = tensor::row_offsets(&output.datatype, &output.shape, &output.bytes)
            .map_err(|detail| bad_answer(format!("output {:?}: {detail}", output.name)))?;
        let mut row = 0;
        for (member, share) in members.iter().zip(&mut shares) {
            let mut shape = output.shape.clone();
            shape[0] = member.rows as i64;
            share.push(Output {
                name: output.name.clone(),
                datatype: output.datatype.clone(),
                shape,
                bytes: output.bytes.slice(offsets[row]..offsets[row + member.rows]),
            });
            row += member.rows;
        }
    }
    Ok(shares)
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::proto::inference::model_infer_response::InferOutputTensor;

    fn tensor(name: &str, datatype: &str, shape: &[i64]) -> InferInputTensor {
        InferInputTensor {
            name: name.into(),
            datatype: datatype.into(),
            shape: shape.to_vec(),
            ..Default::default()
        }
    }

    fn member(rows: usize, raw: &'static [u8]) -> Member {
        Member {
            inputs: ModelInputs {
                tensors: vec![tensor("x", "UINT8", &[rows as i64, 2])],
                raw: vec![Bytes::from_static(raw)],
            },
            rows,
            id: String::new(),
            slot: None,
        }
    }

    #[test]
    fn jobs_join_the_batch_of_their_layout_until_it_is_full() {
        let batcher = Batcher::new(&Batching {
            max_batch: 3,
            linger: Duration::from_millis(5),
        });
        let now = Instant::now();
        let deadline = now + Duration::from_secs(1);
        let first = batcher
            .join(member(1, &[1, 2]), deadline, now)
            .expect("the first job drives its batch");
        assert_eq!(first.send_at.get(), now + Duration::from_millis(5));
        assert!(batcher.join(member(1, &[3, 4]), deadline, now).is_none());
        // Another layout gathers beside it.
        let mut wider = member(1, &[1, 2, 3]);
        wider.inputs.tensors[0].shape = vec![1, 3];
        let other = batcher
            .join(wider, deadline, now)
            .expect("a batch of its own");
        assert_eq!(batcher.open.borrow().len(), 2);
        // Two rows do not fit beside two of three: that batch goes, this job
        // drives the next.
        let next = batcher
            .join(member(2, &[5, 6, 7, 8]), deadline, now)
            .expect("the next batch");
        assert!(first.sealed.get() && first.nudged.get());
        assert_eq!(first.rows.get(), 2);
        assert!(!next.sealed.get());
        // A job whose deadline is near brings the send time forward; its row
        // fills the batch, which goes at once.
        let near = now + Duration::from_millis(7);
        assert!(batcher.join(member(1, &[9, 10]), near, now).is_none());
        assert_eq!(next.deadline.get(), near);
        let by_deadline = near - Duration::from_millis(5);
        assert!(next.send_at.get() <= by_deadline.max(Instant::now()));
        assert!(next.sealed.get());
        assert_eq!(next.members.borrow().len(), 2);
        assert_eq!(batcher.open.borrow().len(), 1, "only the other layout's");
        // The shard stops: what gathers goes.
        batcher.flush();
        assert!(other.sealed.get());
        assert!(batcher.open.borrow().is_empty());
        // A job of more rows than a batch holds goes alone, at once.
        let alone = batcher
            .join(member(4, &[0; 8]), deadline, now)
            .expect("its own batch");
        assert!(alone.sealed.get());
        assert!(batcher.open.borrow().is_empty());
    }

    #[test]
    fn a_member_dropped_unanswered_still_ends_its_job() {
        let slot = Rc::new(Slot::default());
        let mut dropped = member(1, &[1, 2]);
        dropped.slot = Some(slot.clone());
        drop(dropped);
        let answer = slot.answer.take().expect("an answer");
        assert_eq!(
            answer.outputs.unwrap_err().to_string(),
            "infer: no replica available: the batch was dropped unsent: its shard stopped"
        );
    }

    #[test]
    fn rows_are_the_first_dimension_a_devices_inputs_share() {
        assert_eq!(rows(&[tensor("a", "FP32", &[1, 4])]), Ok(1));
        assert_eq!(
            rows(&[tensor("a", "FP32", &[3, 4]), tensor("b", "BYTES", &[3])]),
            Ok(3)
        );
        assert!(rows(&[tensor("a", "FP32", &[])])
            .unwrap_err()
            .contains("a scalar"));
        assert!(rows(&[tensor("a", "FP32", &[0, 4])])
            .unwrap_err()
            .contains("at least one row"));
        assert_eq!(
            rows(&[tensor("a", "FP32", &[1, 4]), tensor("b", "FP32", &[2, 4])]).unwrap_err(),
            "inputs \"a\" and \"b\" have 1 and 2 rows: batching ([classes.batching]) needs a \
             device's inputs to share their first dimension"
        );
    }

    #[test]
    fn layouts_match_past_the_first_dimension_only() {
        let one = [tensor("a", "FP32", &[1, 4]), tensor("b", "BYTES", &[1])];
        let three = [tensor("a", "FP32", &[3, 4]), tensor("b", "BYTES", &[3])];
        assert!(same_layout(&one, &three));
        assert!(!same_layout(
            &one,
            &[tensor("a", "FP32", &[1, 5]), one[1].clone()]
        ));
        assert!(!same_layout(
            &one,
            &[tensor("a", "FP64", &[1, 4]), one[1].clone()]
        ));
        assert!(!same_layout(&one, &one[..1]));
    }

    #[test]
    fn answers_are_split_by_each_members_rows() {
        let members = [member(1, &[1, 2]), member(2, &[3, 4, 5, 6])];
        let output = |shape: Vec<i64>, raw: &'static [u8]| ModelInferResponse {
            outputs: vec![InferOutputTensor {
                name: "y".into(),
                datatype: "UINT8".into(),
                shape,
                ..Default::default()
            }],
            raw_output_contents: vec![Bytes::from_static(raw)],
            ..Default::default()
        };
        let shares = split(output(vec![3, 1], &[7, 8, 9]), &members, 3).unwrap();
        assert_eq!(shares[0][0].shape, vec![1, 1]);
        assert_eq!(&shares[0][0].bytes[..], &[7]);
        assert_eq!(shares[1][0].shape, vec![2, 1]);
        assert_eq!(&shares[1][0].bytes[..], &[8, 9]);
        let error = split(output(vec![2, 1], &[7, 8]), &members, 3).unwrap_err();
        assert_eq!(
            error.to_string(),
            "infer: bad response: batched output \"y\" has shape [2, 1] for a batch of 3"
        );
    }

    #[test]
    fn a_batch_goes_by_its_linger_or_while_its_earliest_deadline_is_a_linger_away() {
        let now = Instant::now();
        let linger = Duration::from_millis(5);
        let far = now + Duration::from_secs(1);
        assert_eq!(send_time(now + linger, far, linger, now), now + linger);
        let near = now + Duration::from_millis(8);
        assert_eq!(
            send_time(now + linger, near, linger, now),
            now + Duration::from_millis(3)
        );
        // Less than a linger left: at once.
        assert_eq!(
            send_time(now + linger, now + Duration::from_millis(2), linger, now),
            now
        );
    }
}
