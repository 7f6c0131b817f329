//! Greedy (issue 14): the MMTM forward and backward against an f64 reference with finite
//! differences, the conditional learning speeds of a step against f64 sums over the
//! official parameter groups, the re-balancing decision against a host transcription of the
//! official `Bias_Mitigation_Strong.on_backward_end`, a re-balancing step (the gate replaced
//! by its running average, no gradient to its excite layer), the schedule of a whole run,
//! end-to-end training, three modalities, exact resume after a kill, and config errors.
use super::baselines::{sets, tiny, tmp, train_log};
use crate::common;
use common::recorder::Recorder;
use common::resume::resume_through_the_cli_is_exact_killed_after;
use common::*;
use equimodal::config::{self, Config};
use equimodal::data;
use equimodal::methods::greedy::{mmtm_depths, RebalanceState};
use equimodal::methods::{DeviceBatch, Method};
use equimodal::nn::{Ctx, Linear, Mmtm};
use equimodal::optim::{Optimizer, Param};
use equimodal::Tensor;
use rand::SeedableRng;
use std::collections::HashMap;
use std::sync::Arc;

/// Small CNN encoders (widths 3, 6: two depths, one MMTM after the second).
const CNN: &[&str] = &["method.name=greedy", "model.encoder=small_cnn", "model.width=3", "model.depth=2"];

fn greedy(extra: &[&str]) -> Vec<String> {
    let mut v: Vec<&str> = CNN.to_vec();
    v.extend_from_slice(extra);
    tiny(&v)
}

fn method_and_batch(extra: &[&str]) -> (Box<dyn Method>, DeviceBatch, Config) {
    let mut v: Vec<&str> = CNN.to_vec();
    v.extend_from_slice(extra);
    super::agm_g_blending::method_and_batch(&v)
}

fn buffer(m: &dyn Method, name: &str) -> Tensor {
    m.buffers().into_iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no buffer {name}")).1
}

// ---------------------------------------------------------------------------------------
// MMTM
// ---------------------------------------------------------------------------------------

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The official MMTM_mitigate forward (no SEonly, no shared weights) in f64: each map times
/// sigmoid(W_m·relu(W_s·[mean(x_0), mean(x_1)] + b_s) + b_m), flattened and concatenated.
/// `x[0..2]` the maps (`shapes`), `x[2..8]` W_s, b_s, W_0, b_0, W_1, b_1.
fn ref_mmtm(x: &[Vec<f64>], n: usize, shapes: &[[usize; 3]; 2], hidden: usize) -> Vec<f64> {
    let total: usize = shapes.iter().map(|s| s[0]).sum();
    let mut out = Vec::new();
    let mut z = vec![0.0; n * total];
    for i in 0..n {
        let mut off = 0;
        for (m, s) in shapes.iter().enumerate() {
            let hw = s[1] * s[2];
            for c in 0..s[0] {
                let base = (i * s[0] + c) * hw;
                z[i * total + off + c] = x[m][base..base + hw].iter().sum::<f64>() / hw as f64;
            }
            off += s[0];
        }
    }
    let (ws, bs) = (&x[2], &x[3]);
    let e: Vec<f64> = (0..n * hidden).map(|k| (bs[k % hidden] + (0..total).map(|j| ws[(k % hidden) * total + j] * z[(k / hidden) * total + j]).sum::<f64>()).max(0.0)).collect();
    for (m, s) in shapes.iter().enumerate() {
        let (w, b) = (&x[4 + 2 * m], &x[5 + 2 * m]);
        let hw = s[1] * s[2];
        for i in 0..n {
            for c in 0..s[0] {
                let g = sigmoid(b[c] + (0..hidden).map(|h| w[c * hidden + h] * e[i * hidden + h]).sum::<f64>());
                let base = (i * s[0] + c) * hw;
                out.extend(x[m][base..base + hw].iter().map(|v| v * g));
            }
        }
    }
    out
}

#[test]
fn mmtm_forward_and_backward_match_an_f64_reference() {
    // shapes that are multiples of no tile, different channels and spatial sizes per
    // modality; ratio 3: bottleneck ⌊2·(3 + 5)/3⌋ = 5
    let (n, shapes, hidden) = (3usize, [[3usize, 5, 4], [5, 3, 2]], 5usize);
    let total = 8;
    let mut rng = Rng::new(71);
    let mut inputs: Vec<(Vec<f64>, Vec<usize>)> = shapes.iter().map(|s| (rng.normals(n * s[0] * s[1] * s[2]), vec![n, s[0], s[1], s[2]])).collect();
    inputs.push((rng.normals(hidden * total).iter().map(|v| v * 0.5).collect(), vec![hidden, total]));
    inputs.push((rng.normals(hidden), vec![hidden]));
    for s in &shapes {
        inputs.push((rng.normals(s[0] * hidden).iter().map(|v| v * 0.5).collect(), vec![s[0], hidden]));
        inputs.push((rng.normals(s[0]), vec![s[0]]));
    }
    let lin = |w: &Tensor, b: &Tensor, name: &str| Linear {
        weight: Param { name: format!("{name}.weight"), tensor: w.clone() },
        bias: Some(Param { name: format!("{name}.bias"), tensor: b.clone() }),
        in_dim: w.dim(1),
        out_dim: w.dim(0),
    };
    let gpu_f = |t: &[Tensor]| {
        let mmtm = Mmtm { squeeze: lin(&t[2], &t[3], "s"), excite: vec![lin(&t[4], &t[5], "a"), lin(&t[6], &t[7], "v")] };
        let gates = mmtm.gates(&t[..2], &Ctx::train())?;
        let outs: Vec<Tensor> = (0..2).map(|m| Mmtm::rescale(&t[m], &gates[m])?.reshape(&[t[m].numel()])).collect::<equimodal::Result<_>>()?;
        equimodal::ops::concat(&[&outs[0], &outs[1]], 0)
    };
    // forward: means of up to 20 values through two short dot products; the weight gradients
    // sum over N·ΣC·H·W ≈ 3·8·20 terms of unit scale
    let tol = Tol::sums(20, 1.0, 500, 1.0);
    check_op("mmtm", &inputs, &(0..8).collect::<Vec<_>>(), &gpu_f, &|x| ref_mmtm(x, n, &shapes, hidden), tol);
    // the module built from its settings has the official bottleneck
    let mut r = rand::rngs::StdRng::seed_from_u64(1);
    let names = vec!["a".to_string(), "v".to_string()];
    let m = Mmtm::new(&gpu(), "mmtm", &[3, 5], &names, 3, &mut r).unwrap();
    assert_eq!((m.squeeze.in_dim, m.squeeze.out_dim, m.excite[0].out_dim, m.excite[1].out_dim), (8, 5, 3, 5));
    assert!(Mmtm::new(&gpu(), "mmtm", &[3], &names[..1], 4, &mut r).is_err(), "one modality has nothing to transfer");
    let e = m.gates(&[Tensor::zeros(&gpu(), &[2, 4, 3, 3]).unwrap(), Tensor::zeros(&gpu(), &[2, 5, 3, 3]).unwrap()], &Ctx::eval()).unwrap_err().to_string();
    assert!(e.contains("mmtm") && e.contains("[2, 4, 3, 3]"), "{e}");
}

#[test]
fn mmtm_sits_after_the_last_three_depths_never_the_first() {
    // the official ResNet18 pair (stem + layer1..4): after layer2, layer3, layer4
    assert_eq!(mmtm_depths(5), vec![2, 3, 4]);
    assert_eq!(mmtm_depths(4), vec![1, 2, 3]);
    assert_eq!(mmtm_depths(2), vec![1]);
    let (m, _, _) = method_and_batch(&["model.depth=4"]);
    let names: Vec<String> = m.params().into_iter().map(|p| p.name).filter(|n| n.starts_with("mmtm")).collect();
    for d in 1..4 {
        for part in ["squeeze.weight", "excite.audio.weight", "excite.visual.bias"] {
            assert!(names.contains(&format!("mmtm{d}.{part}")), "mmtm{d}.{part} in {names:?}");
        }
    }
    assert!(!names.iter().any(|n| n.starts_with("mmtm0")), "{names:?}");
}

// ---------------------------------------------------------------------------------------
// conditional learning speeds
// ---------------------------------------------------------------------------------------

/// Σ‖g‖² / Σ‖w‖² over the parameters whose names `pick` selects, in f64.
fn ref_speed(params: &HashMap<String, Vec<f32>>, grads: &HashMap<String, Vec<f32>>, pick: &dyn Fn(&str) -> bool) -> f64 {
    let sq = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
    let names: Vec<&String> = params.keys().filter(|n| pick(n)).collect();
    assert!(names.len() >= 2, "a group of {names:?}");
    let g: f64 = names.iter().map(|n| sq(&grads[*n])).sum();
    let w: f64 = names.iter().map(|n| sq(&params[*n])).sum();
    g / w
}

#[test]
fn conditional_learning_speeds_follow_the_official_parameter_groups() {
    // compute_BDR: modality m's bypass = every MMTM's shared squeeze layer and its own excite
    // layers; its main = its branch (encoder and head). After one step outside a window the
    // accumulated speeds are that step's.
    let (mut m, db, _) = method_and_batch(&["model.depth=3"]);
    let params: HashMap<String, Vec<f32>> = m.params().into_iter().map(|p| (p.name, p.tensor.to_vec().unwrap())).collect();
    let mut rec = Recorder::default();
    rec.add_params(&m.trainable());
    m.train_step(&db, &mut rec, 0).unwrap();
    let grads: HashMap<String, Vec<f32>> = rec.steps.pop().unwrap().into_iter().collect();
    assert_eq!(grads.len(), params.len(), "every parameter has a gradient");
    let bypass = f64s(&buffer(m.as_ref(), "greedy.bypass_speed"));
    let main = f64s(&buffer(m.as_ref(), "greedy.main_speed"));
    for (i, name) in ["audio", "visual"].iter().enumerate() {
        let own = format!(".excite.{name}.");
        let b = ref_speed(&params, &grads, &|n| n.starts_with("mmtm") && (n.contains(".squeeze.") || n.contains(&own)));
        let mn = ref_speed(&params, &grads, &|n| n.starts_with(&format!("enc.{name}.")) || n.starts_with(&format!("head.{name}.")));
        // positive sums of up to ~10^3 squares in f32: ~u·sqrt(K) relative, 1e-5 a wide margin
        assert_close(&format!("{name} bypass"), &[bypass[i] as f32], &[b], 1e-5, 0.0);
        assert_close(&format!("{name} main"), &[main[i] as f32], &[mn], 1e-5, 0.0);
    }
    assert_eq!(f64s(&buffer(m.as_ref(), "greedy.curation")), vec![0.0], "epoch 0 is before start_epoch");
}

fn f64s(t: &Tensor) -> Vec<f64> {
    t.to_vec().unwrap().into_iter().map(|v| v as f64).collect()
}

// ---------------------------------------------------------------------------------------
// the re-balancing decision
// ---------------------------------------------------------------------------------------

/// `Bias_Mitigation_Strong` (src/callbacks.py), transcribed: its state and on_backward_end.
/// For more than two modalities, this project's generalisation: the spread max − min of the
/// BDRs against ε, the modality of the largest BDR re-balanced.
struct RefCallback {
    mb: Vec<f64>,
    mm: Vec<f64>,
    curation: bool,
    step: usize,
    caring: usize,
}

impl RefCallback {
    fn new(m: usize) -> RefCallback {
        RefCallback { mb: vec![0.0; m], mm: vec![0.0; m], curation: false, step: 0, caring: 0 }
    }
    /// Returns the BDR spread of the step (None when not computed).
    fn on_backward_end(&mut self, rb: &[f64], rm: &[f64], unlock: bool, eps: f64, window: usize) -> Option<f64> {
        if unlock && self.curation {
            self.step += 1;
            if self.step == window {
                self.curation = false;
            }
            return None;
        }
        for i in 0..rb.len() {
            self.mb[i] += rb[i];
            self.mm[i] += rm[i];
        }
        let bdr: Vec<f64> = (0..rb.len()).map(|i| (self.mb[i] / self.mm[i]).log10()).collect();
        let (hi, lo) = (bdr.iter().cloned().fold(f64::MIN, f64::max), bdr.iter().cloned().fold(f64::MAX, f64::min));
        if !unlock {
            self.curation = false;
            self.caring = 0;
        } else if hi - lo > eps {
            // two modalities: d_BDR = BDR_0 − BDR_1 > 0 → caring 0, < 0 → caring 1
            self.curation = true;
            self.step = 0;
            self.caring = bdr.iter().position(|&b| b == hi).unwrap();
        } else {
            self.curation = false;
            self.caring = 0;
        }
        Some(hi - lo)
    }
}

fn check_schedule(m: usize, seed: u64) {
    let (eps, window, steps, unlock_at) = (0.05, 3usize, 80, 7);
    let g = gpu();
    let mut rng = Rng::new(seed);
    let mut gpu_state = RebalanceState::zeros(&g, m).unwrap();
    let mut host = RefCallback::new(m);
    let (mut windows, mut skipped) = (0, 0);
    for t in 0..steps {
        let unlock = t >= unlock_at;
        // speeds of a few orders of magnitude, as real gradient/weight ratios
        let (rb, rm): (Vec<f64>, Vec<f64>) = (0..m).map(|_| (10f64.powf(rng.range(-4.0, -2.0)), 10f64.powf(rng.range(-4.0, -2.0)))).unzip();
        let (rb, rm) = (round_f32(&rb), round_f32(&rm));
        let was = host.curation;
        let spread = host.on_backward_end(&rb, &rm, unlock, eps, window);
        // f32 and f64 BDRs differ by ~1e-6: a spread that close to ε could go either way
        if spread.is_some_and(|s| (s - eps).abs() < 1e-4) {
            skipped += 1;
        }
        windows += usize::from(host.curation && !was);
        gpu_state = gpu_state.advance(&upload(&g, &rb, &[m]), &upload(&g, &rm, &[m]), unlock, eps as f32, window).unwrap();
        let cur = f64s(&gpu_state.curation)[0];
        assert_eq!(cur, f64::from(u8::from(host.curation)), "M={m} step {t}: curation");
        if host.curation {
            assert_eq!(f64s(&gpu_state.step)[0], host.step as f64, "M={m} step {t}: window step");
            let want: Vec<f64> = (0..m).map(|i| f64::from(u8::from(i == host.caring))).collect();
            assert_eq!(f64s(&gpu_state.caring), want, "M={m} step {t}: re-balanced modality");
        }
        assert_close(&format!("M={m} step {t}: bypass sums"), &gpu_state.bypass.to_vec().unwrap(), &host.mb, 1e-5, 0.0);
        assert_close(&format!("M={m} step {t}: main sums"), &gpu_state.main.to_vec().unwrap(), &host.mm, 1e-5, 0.0);
    }
    assert_eq!(skipped, 0, "choose another seed: a spread within 1e-4 of ε");
    assert!(windows >= 3, "M={m}: only {windows} windows started; the schedule is not exercised");
}

#[test]
fn rebalancing_decisions_follow_the_official_callback() {
    check_schedule(2, 5);
    check_schedule(3, 6);
}

#[test]
fn a_rebalancing_step_uses_the_running_gate_and_stops_its_gradient() {
    // force a window for audio: curation = 1, caring = [1, 0]
    let (mut m, db, _) = method_and_batch(&[]);
    buffer(m.as_ref(), "greedy.curation").write(&[1.0]).unwrap();
    buffer(m.as_ref(), "greedy.caring").write(&[1.0, 0.0]).unwrap();
    let mut rec = Recorder::default();
    rec.add_params(&m.trainable());
    m.train_step(&db, &mut rec, 3).unwrap();
    let g: HashMap<String, Vec<f32>> = rec.steps.pop().unwrap().into_iter().collect();
    for p in ["mmtm1.excite.audio.weight", "mmtm1.excite.audio.bias"] {
        assert!(g[p].iter().all(|&v| v == 0.0), "{p}: the replaced gate passes no gradient: {:?}", g[p]);
    }
    for p in ["mmtm1.excite.visual.weight", "mmtm1.squeeze.weight", "enc.audio.block0.conv.weight"] {
        assert!(g[p].iter().any(|&v| v != 0.0), "{p} must still learn");
    }
    // the first step's running average is that step's mean gate, a value in (0, 1) per channel
    let run = buffer(m.as_ref(), "mmtm1.running_gate.audio").to_vec().unwrap();
    assert_eq!(run.len(), 6);
    assert!(run.iter().all(|&v| v > 0.0 && v < 1.0), "{run:?}");
    assert_eq!(f64s(&buffer(m.as_ref(), "greedy.curation_step")), vec![1.0]);
    // the same step without the window: the audio branch sees the visual modality through its
    // own gate, so its gradients differ
    let (mut plain, db2, _) = method_and_batch(&[]);
    let mut rec = Recorder::default();
    rec.add_params(&plain.trainable());
    plain.train_step(&db2, &mut rec, 3).unwrap();
    let p: HashMap<String, Vec<f32>> = rec.steps.pop().unwrap().into_iter().collect();
    assert_ne!(p["enc.audio.block0.conv.weight"], g["enc.audio.block0.conv.weight"]);
    assert_eq!(p["head.visual.weight"].len(), g["head.visual.weight"].len());
    assert!(p["mmtm1.excite.audio.weight"].iter().any(|&v| v != 0.0));
}

/// Re-balancing steps per epoch when every decision triggers (ε = 0): a decision step, then
/// `window` re-balancing steps, over `batches` steps per epoch from `start` on.
fn always_trigger_counts(epochs: usize, batches: usize, start: usize, window: usize) -> Vec<usize> {
    let (mut cur, mut step) = (false, 0);
    (0..epochs)
        .map(|e| {
            let mut n = 0;
            for _ in 0..batches {
                n += usize::from(cur);
                if e < start {
                    continue;
                }
                if cur {
                    step += 1;
                    cur = step != window;
                } else {
                    cur = true;
                    step = 0;
                }
            }
            n
        })
        .collect()
}

#[test]
fn a_run_rebalances_on_the_official_schedule() {
    // 160 samples, batch 32: 5 steps per epoch; windows cross epoch boundaries
    let count = |l: &serde_json::Value| -> usize { ["audio", "visual"].iter().map(|m| l["greedy"]["rebalance_steps"][m].as_f64().unwrap() as usize).sum() };
    let lines = train_log(&greedy(&["train.epochs=4", "method.greedy.epsilon=0", "method.greedy.window=3", "method.greedy.start_epoch=1"]), &tmp("greedy-always"));
    let got: Vec<usize> = lines.iter().map(count).collect();
    assert_eq!(got, always_trigger_counts(4, 5, 1, 3), "{lines:?}");
    assert_eq!(lines[0]["greedy"]["unlocked"], serde_json::json!(false));
    let lines = train_log(&greedy(&["train.epochs=2", "method.greedy.epsilon=1e9"]), &tmp("greedy-never"));
    assert!(lines.iter().all(|l| count(l) == 0), "{lines:?}");
}

// ---------------------------------------------------------------------------------------
// end to end
// ---------------------------------------------------------------------------------------

#[test]
fn greedy_trains_on_synthetic_data() {
    // default synthetic data: audio weak, visual strong; 10 classes (chance 0.1)
    // measured (lavapipe): 81.5 % after 5 epochs
    let lines = train_log(&greedy(&["train.epochs=5", "data.n_train=480", "data.n_test=200", "model.width=4", "model.depth=3", "train.lr=0.05"]), &tmp("e2e-greedy"));
    let last = lines.last().unwrap();
    let acc = last["test"]["acc"].as_f64().unwrap();
    assert!(acc > 0.5, "test accuracy {acc}: {last}");
    let losses: Vec<f64> = lines.iter().map(|l| l["train"]["loss"].as_f64().unwrap()).collect();
    assert!(losses.last().unwrap() < &losses[0], "the loss must fall: {losses:?}");
    for m in ["audio", "visual"] {
        assert!(last["greedy"]["bdr"][m].as_f64().unwrap().is_finite(), "{last}");
    }
}

#[test]
fn greedy_handles_three_modalities_and_refuses_what_it_cannot_connect() {
    let three = "data.modalities=[{name=\"a\",shape=[1,8,8],signal=0.1},{name=\"b\",shape=[1,8,8],signal=0.6},{name=\"c\",shape=[1,8,8],signal=0.3}]";
    let lines = train_log(&greedy(&[three, "train.epochs=2", "method.greedy.epsilon=0"]), &tmp("three-greedy"));
    let last = lines.last().unwrap();
    assert_eq!(last["greedy"]["bdr"].as_object().unwrap().len(), 3, "{last}");
    let steps: f64 = ["a", "b", "c"].iter().map(|m| last["greedy"]["rebalance_steps"][m].as_f64().unwrap()).sum();
    assert!(steps > 0.0, "{last}");
    assert!(last["train"]["loss"].as_f64().unwrap().is_finite());
    let build_err = |extra: &[&str]| {
        let c: Config = config::load(None, &greedy(extra)).unwrap().0;
        let ds: Arc<dyn data::Dataset> = Arc::from(data::build(&c.data).unwrap());
        let mut rng = rand::rngs::StdRng::seed_from_u64(0);
        equimodal::methods::build(&gpu(), &c.method_setup(), ds.modalities(), ds.num_classes(), &mut rng).err().expect("must be refused").to_string()
    };
    let e = build_err(&["model.encoder=mlp"]);
    assert!(e.contains("model.encoder") && e.contains("small_cnn"), "{e}");
    let e = build_err(&["model.modalities.audio.encoder=transformer", "model.modalities.audio.heads=1"]);
    assert!(e.contains("model.modalities.audio.encoder"), "{e}");
    let e = build_err(&["model.modalities.audio.depth=3"]);
    assert!(e.contains("model.depth"), "{e}");
    let e = build_err(&["model.depth=1"]);
    assert!(e.contains("model.depth"), "{e}");
    // (a single modality never reaches the method: the data config refuses it)
}

#[test]
fn resume_after_a_kill_greedy_cnn() {
    // 480 samples, batch 32: 15 steps per epoch, windows of 4 that cross epoch boundaries;
    // the window state, the speed sums, the running gates and their step count are
    // checkpointed; killed after two logged epochs so the restored state is mid-run
    let sets = greedy(&["train.epochs=4", "data.n_train=480", "method.greedy.epsilon=0.001", "method.greedy.window=4"]);
    resume_through_the_cli_is_exact_killed_after("greedy", &sets, 4, 2);
}

#[test]
fn greedy_config_errors_name_the_field_and_defaults_are_the_official() {
    let err = |s: &[&str]| config::load(None, &sets(s)).unwrap_err().to_string();
    for (set, field) in [
        ("method.greedy.epsilon=-1", "method.greedy.epsilon"),
        ("method.greedy.epsilon=nan", "method.greedy.epsilon"),
        ("method.greedy.window=0", "method.greedy.window"),
        ("method.greedy.ratio=0", "method.greedy.ratio"),
    ] {
        let e = err(&["method.name=greedy", set]);
        assert!(e.contains(field), "{set}: {e}");
    }
    let e = err(&["method.greedy.bogus=1"]);
    assert!(e.contains("bogus"), "{e}");
    let c = config::load(None, &sets(&["method.name=greedy"])).unwrap().0;
    let g = &c.method.greedy;
    assert_eq!((g.epsilon, g.window, g.start_epoch, g.ratio), (0.01, 5, 1, 4));
}
