//! Batch loader: one epoch of [`HostBatch`]es, assembled ahead of the consumer by
//! background worker threads.
//!
//! * Order: training shuffles with a permutation seeded by `(seed, epoch, split)`;
//!   evaluation goes in index order. Batches always come out in order, whichever worker
//!   built them, so an epoch is reproducible regardless of thread timing.
//! * Augmentation: each sample gets its own RNG seeded by `(seed, epoch, split, index)`.
//! * Prefetch: workers claim batch numbers from a shared counter and send finished batches
//!   through a bounded channel of depth `prefetch`.
//! * Errors (including a panicking dataset) come back as `Err` items; the epoch goes on.
//! * Dropping the loader mid-epoch stops the workers and joins them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::SeedableRng;

use super::{derive_seed, Dataset, HostBatch, HostTensor, Split};
use crate::error::{Error, Result};

/// How a [`Loader`] batches one split.
#[derive(Debug, Clone, PartialEq)]
pub struct LoaderConfig {
    /// Samples per batch, ≥ 1.
    pub batch_size: usize,
    /// Shuffle with a `(seed, epoch)` permutation (training).
    pub shuffle: bool,
    /// Drop the last incomplete batch.
    pub drop_last: bool,
    /// Background worker threads; 0 assembles batches on the caller's thread.
    pub workers: usize,
    /// Finished batches that may wait in the channel.
    pub prefetch: usize,
    /// Seed of the shuffle and of the per-sample augmentation RNGs.
    pub seed: u64,
    /// Epoch number, mixed into the seed so each epoch has its own order.
    pub epoch: u64,
    /// Pass a per-sample RNG to `Dataset::sample` (training augmentation).
    pub augment: bool,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            batch_size: 64,
            shuffle: false,
            drop_last: false,
            workers: 2,
            prefetch: 4,
            seed: 0,
            epoch: 0,
            augment: false,
        }
    }
}

impl LoaderConfig {
    /// Shuffled, augmented training epoch.
    pub fn train(batch_size: usize, seed: u64, epoch: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            augment: true,
            seed,
            epoch,
            ..Default::default()
        }
    }
    /// In-order, deterministic evaluation pass.
    pub fn eval(batch_size: usize) -> Self {
        LoaderConfig {
            batch_size,
            ..Default::default()
        }
    }
}

/// The sample order of one epoch.
pub fn epoch_order(len: usize, shuffle: bool, seed: u64, epoch: u64, split: Split) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        let mut rng = StdRng::seed_from_u64(derive_seed(&[seed, epoch, split.id(), 0x5_4FF1E]));
        order.shuffle(&mut rng);
    }
    order
}

/// Build one batch from the given dataset indices (also used by the workers).
pub fn assemble_batch(
    ds: &dyn Dataset,
    split: Split,
    indices: &[usize],
    augment: bool,
    seed: u64,
    epoch: u64,
) -> Result<HostBatch> {
    let specs = ds.modalities();
    let b = indices.len();
    let mut inputs: Vec<HostTensor> = specs
        .iter()
        .map(|s| {
            let mut shape = vec![b];
            shape.extend_from_slice(&s.shape);
            HostTensor {
                shape,
                data: Vec::with_capacity(b * s.numel()),
            }
        })
        .collect();
    let mut labels = Vec::with_capacity(b);
    for &idx in indices {
        let mut rng = augment.then(|| {
            StdRng::seed_from_u64(derive_seed(&[seed, epoch, split.id(), idx as u64, 0xA06]))
        });
        let (xs, y) = ds.sample(split, idx, rng.as_mut())?;
        if xs.len() != specs.len() {
            return Err(Error::data(
                ds.name(),
                format!(
                    "sample {idx} of split `{split}` has {} modalities, expected {}",
                    xs.len(),
                    specs.len()
                ),
            ));
        }
        if y as usize >= ds.num_classes() {
            return Err(Error::data(
                ds.name(),
                format!(
                    "sample {idx} of split `{split}` has label {y}, outside 0..{}",
                    ds.num_classes()
                ),
            ));
        }
        for ((x, spec), t) in xs.into_iter().zip(specs).zip(inputs.iter_mut()) {
            if x.len() != spec.numel() {
                return Err(Error::data(
                    ds.name(),
                    format!(
                        "sample {idx} of split `{split}`: modality `{}` has {} values, shape {:?} needs {}",
                        spec.name,
                        x.len(),
                        spec.shape,
                        spec.numel()
                    ),
                ));
            }
            t.data.extend_from_slice(&x);
        }
        labels.push(y);
    }
    Ok(HostBatch {
        inputs,
        labels,
        indices: indices.to_vec(),
    })
}

fn assemble_catching(
    ds: &dyn Dataset,
    split: Split,
    indices: &[usize],
    augment: bool,
    seed: u64,
    epoch: u64,
) -> Result<HostBatch> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assemble_batch(ds, split, indices, augment, seed, epoch)
    })) {
        Ok(r) => r,
        Err(p) => {
            let msg = p
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| p.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::data(
                ds.name(),
                format!("panic while loading split `{split}`: {msg}"),
            ))
        }
    }
}

type Msg = (usize, Result<HostBatch>);

/// Iterator over the batches of one epoch; see the module docs.
pub struct Loader {
    dataset: Arc<dyn Dataset>,
    split: Split,
    cfg: LoaderConfig,
    order: Arc<Vec<usize>>,
    n_batches: usize,
    next: usize,
    rx: Option<Receiver<Msg>>,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    pending: BTreeMap<usize, Result<HostBatch>>,
    wait: Duration,
    started: Instant,
    finished: Option<Instant>,
}

impl Loader {
    /// Plan one epoch of `split`; errors on `batch_size = 0` or `prefetch = 0` with workers.
    pub fn new(dataset: Arc<dyn Dataset>, split: Split, cfg: LoaderConfig) -> Result<Self> {
        if cfg.batch_size == 0 {
            return Err(Error::config("loader.batch_size", "must be >= 1"));
        }
        if cfg.workers > 0 && cfg.prefetch == 0 {
            return Err(Error::config(
                "loader.prefetch",
                "must be >= 1 when workers > 0",
            ));
        }
        let len = dataset.len(split);
        let order = Arc::new(epoch_order(len, cfg.shuffle, cfg.seed, cfg.epoch, split));
        let n_batches = if cfg.drop_last {
            len / cfg.batch_size
        } else {
            len.div_ceil(cfg.batch_size)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        let mut rx = None;
        if cfg.workers > 0 && n_batches > 0 {
            let (tx, r) = sync_channel::<Msg>(cfg.prefetch);
            rx = Some(r);
            let counter = Arc::new(AtomicUsize::new(0));
            for w in 0..cfg.workers.min(n_batches) {
                let (tx, counter, stop, order, ds) = (
                    tx.clone(),
                    counter.clone(),
                    stop.clone(),
                    order.clone(),
                    dataset.clone(),
                );
                let c = cfg.clone();
                let h = std::thread::Builder::new()
                    .name(format!("equimodal-loader-{w}"))
                    .spawn(move || loop {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let b = counter.fetch_add(1, Ordering::Relaxed);
                        if b >= n_batches {
                            break;
                        }
                        let idx =
                            &order[b * c.batch_size..((b + 1) * c.batch_size).min(order.len())];
                        let res =
                            assemble_catching(ds.as_ref(), split, idx, c.augment, c.seed, c.epoch);
                        if tx.send((b, res)).is_err() {
                            break;
                        }
                    })
                    .map_err(|e| Error::Other(format!("cannot spawn loader thread: {e}")))?;
                workers.push(h);
            }
        }
        Ok(Loader {
            dataset,
            split,
            cfg,
            order,
            n_batches,
            next: 0,
            rx,
            workers,
            stop,
            pending: BTreeMap::new(),
            wait: Duration::ZERO,
            started: Instant::now(),
            finished: None,
        })
    }

    /// Batches in this epoch (the last one short unless `drop_last`).
    pub fn num_batches(&self) -> usize {
        self.n_batches
    }
    /// The epoch's sample order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
    /// The configuration it was built with.
    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }
    /// Time the consumer spent blocked waiting for a batch (with `workers = 0`, the time
    /// spent assembling batches in `next`).
    pub fn wait_time(&self) -> Duration {
        self.wait
    }
    /// Time since the loader was created, up to the end of the epoch.
    pub fn total_time(&self) -> Duration {
        self.finished.unwrap_or_else(Instant::now) - self.started
    }
}

impl Iterator for Loader {
    type Item = Result<HostBatch>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.n_batches {
            if self.finished.is_none() {
                self.finished = Some(Instant::now());
            }
            return None;
        }
        let b = self.next;
        self.next += 1;
        if self.rx.is_none() {
            let t = Instant::now();
            let idx = &self.order
                [b * self.cfg.batch_size..((b + 1) * self.cfg.batch_size).min(self.order.len())];
            let r = assemble_catching(
                self.dataset.as_ref(),
                self.split,
                idx,
                self.cfg.augment,
                self.cfg.seed,
                self.cfg.epoch,
            );
            self.wait += t.elapsed();
            return Some(r);
        }
        if let Some(r) = self.pending.remove(&b) {
            return Some(r);
        }
        let rx = self.rx.as_ref().expect("receiver present");
        loop {
            let t = Instant::now();
            let got = rx.recv();
            self.wait += t.elapsed();
            match got {
                Ok((i, r)) if i == b => return Some(r),
                Ok((i, r)) => {
                    self.pending.insert(i, r);
                }
                Err(_) => {
                    self.next = self.n_batches;
                    return Some(Err(Error::Other(format!(
                        "loader workers for split `{}` exited before batch {b}",
                        self.split
                    ))));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.n_batches - self.next.min(self.n_batches);
        (r, Some(r))
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.rx.take();
        self.pending.clear();
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}
