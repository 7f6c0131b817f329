//! Independent f64 CPU reference of the module layer (tests only): plain loops over
//! row-major [N, C, H, W] / [N, L, D] data, PyTorch semantics, written from the definitions
//! (not from the GPU code). Parameters come by name, as `Module::params()` names them.
#![allow(dead_code)]
use std::collections::HashMap;

/// A host tensor: shape + row-major f64 data.
#[derive(Clone, Debug)]
pub struct T {
    pub shape: Vec<usize>,
    pub data: Vec<f64>,
}

impl T {
    pub fn new(shape: &[usize], data: Vec<f64>) -> T {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "T::new: shape {shape:?} vs {} values", data.len());
        T { shape: shape.to_vec(), data }
    }
    pub fn zeros(shape: &[usize]) -> T {
        T::new(shape, vec![0.0; shape.iter().product()])
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn map(&self, f: impl Fn(f64) -> f64) -> T {
        T::new(&self.shape, self.data.iter().map(|&v| f(v)).collect())
    }
}

/// Parameters / buffers by full name.
pub type Named = HashMap<String, T>;

pub fn get<'a>(p: &'a Named, name: &str) -> &'a T {
    p.get(name).unwrap_or_else(|| panic!("reference: no parameter or buffer named {name:?}"))
}

// ---- elementary layers ---------------------------------------------------------------------

/// x [N, C, H, W], w [O, C, K, K]; zero padding, no bias.
pub fn conv2d(x: &T, w: &T, stride: usize, pad: usize) -> T {
    conv2d_ex(x, w, None, (stride, stride), (pad, pad), (1, 1))
}

/// The direct convolution every conv test compares with: x [N, C, H, W], w [O, C, KH, KW],
/// optional bias [O], per-axis stride, zero padding and dilation.
pub fn conv2d_ex(x: &T, w: &T, b: Option<&T>, stride: (usize, usize), pad: (usize, usize), dil: (usize, usize)) -> T {
    let (n, c, h, wd) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (o, wc, kh, kw) = (w.dim(0), w.dim(1), w.dim(2), w.dim(3));
    assert_eq!(c, wc, "conv2d reference: channels");
    let ho = (h + 2 * pad.0 - dil.0 * (kh - 1) - 1) / stride.0 + 1;
    let wo = (wd + 2 * pad.1 - dil.1 * (kw - 1) - 1) / stride.1 + 1;
    let mut y = T::zeros(&[n, o, ho, wo]);
    for bi in 0..n {
        for oc in 0..o {
            for oy in 0..ho {
                for ox in 0..wo {
                    let mut acc = b.map_or(0.0, |b| b.data[oc]);
                    for ic in 0..c {
                        for ky in 0..kh {
                            let iy = (oy * stride.0 + ky * dil.0) as isize - pad.0 as isize;
                            if iy < 0 || iy >= h as isize {
                                continue;
                            }
                            for kx in 0..kw {
                                let ix = (ox * stride.1 + kx * dil.1) as isize - pad.1 as isize;
                                if ix < 0 || ix >= wd as isize {
                                    continue;
                                }
                                acc += x.data[((bi * c + ic) * h + iy as usize) * wd + ix as usize]
                                    * w.data[((oc * c + ic) * kh + ky) * kw + kx];
                            }
                        }
                    }
                    y.data[((bi * o + oc) * ho + oy) * wo + ox] = acc;
                }
            }
        }
    }
    y
}

/// Batch norm (PyTorch): training uses the batch mean and biased variance for the output
/// and updates the running stats with momentum and the unbiased variance; eval uses the
/// running stats. x [N, C, H, W] or [N, C].
#[allow(clippy::too_many_arguments)]
pub fn batch_norm(x: &T, w: &T, b: &T, rm: &mut T, rv: &mut T, training: bool, momentum: f64, eps: f64) -> T {
    let (n, c) = (x.dim(0), x.dim(1));
    let hw: usize = x.shape[2..].iter().product();
    let m = n * hw;
    let mut y = T::zeros(&x.shape);
    for ch in 0..c {
        let idx = |i: usize, s: usize| (i * c + ch) * hw + s;
        let (mean, var) = if training {
            let mut sum = 0.0;
            for i in 0..n {
                for s in 0..hw {
                    sum += x.data[idx(i, s)];
                }
            }
            let mean = sum / m as f64;
            let mut sq = 0.0;
            for i in 0..n {
                for s in 0..hw {
                    sq += (x.data[idx(i, s)] - mean).powi(2);
                }
            }
            let var = sq / m as f64;
            rm.data[ch] = (1.0 - momentum) * rm.data[ch] + momentum * mean;
            rv.data[ch] = (1.0 - momentum) * rv.data[ch] + momentum * sq / (m as f64 - 1.0);
            (mean, var)
        } else {
            (rm.data[ch], rv.data[ch])
        };
        let inv = 1.0 / (var + eps).sqrt();
        for i in 0..n {
            for s in 0..hw {
                y.data[idx(i, s)] = (x.data[idx(i, s)] - mean) * inv * w.data[ch] + b.data[ch];
            }
        }
    }
    y
}

pub fn relu(x: &T) -> T {
    x.map(|v| v.max(0.0))
}

pub fn add(a: &T, b: &T) -> T {
    assert_eq!(a.shape, b.shape, "add reference");
    T::new(&a.shape, a.data.iter().zip(&b.data).map(|(x, y)| x + y).collect())
}

pub fn mul(a: &T, b: &T) -> T {
    assert_eq!(a.shape, b.shape, "mul reference");
    T::new(&a.shape, a.data.iter().zip(&b.data).map(|(x, y)| x * y).collect())
}

/// Max pooling with implicit -inf padding (PyTorch).
pub fn max_pool2d(x: &T, k: usize, stride: usize, pad: usize) -> T {
    let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let ho = (h + 2 * pad - k) / stride + 1;
    let wo = (w + 2 * pad - k) / stride + 1;
    let mut y = T::zeros(&[n, c, ho, wo]);
    for p in 0..n * c {
        for oy in 0..ho {
            for ox in 0..wo {
                let mut m = f64::NEG_INFINITY;
                for ky in 0..k {
                    for kx in 0..k {
                        let iy = (oy * stride + ky) as isize - pad as isize;
                        let ix = (ox * stride + kx) as isize - pad as isize;
                        if iy >= 0 && iy < h as isize && ix >= 0 && ix < w as isize {
                            m = m.max(x.data[(p * h + iy as usize) * w + ix as usize]);
                        }
                    }
                }
                y.data[(p * ho + oy) * wo + ox] = m;
            }
        }
    }
    y
}

/// [N, C, H, W] -> [N, C] mean over H, W.
pub fn global_avg_pool(x: &T) -> T {
    let (n, c) = (x.dim(0), x.dim(1));
    let hw: usize = x.shape[2..].iter().product();
    T::new(&[n, c], (0..n * c).map(|p| x.data[p * hw..(p + 1) * hw].iter().sum::<f64>() / hw as f64).collect())
}

/// x [..., in] · wᵀ + b, w [out, in].
pub fn linear(x: &T, w: &T, b: Option<&T>) -> T {
    let (out, inp) = (w.dim(0), w.dim(1));
    assert_eq!(*x.shape.last().unwrap(), inp, "linear reference: features");
    let rows = x.data.len() / inp;
    let mut shape = x.shape.clone();
    *shape.last_mut().unwrap() = out;
    let mut y = T::zeros(&shape);
    for r in 0..rows {
        for o in 0..out {
            let mut acc = b.map(|b| b.data[o]).unwrap_or(0.0);
            for i in 0..inp {
                acc += x.data[r * inp + i] * w.data[o * inp + i];
            }
            y.data[r * out + o] = acc;
        }
    }
    y
}

/// Layer norm over the last dim (biased variance).
pub fn layer_norm(x: &T, w: &T, b: &T, eps: f64) -> T {
    let d = *x.shape.last().unwrap();
    let mut y = T::zeros(&x.shape);
    for r in 0..x.data.len() / d {
        let row = &x.data[r * d..(r + 1) * d];
        let mean = row.iter().sum::<f64>() / d as f64;
        let var = row.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
        let inv = 1.0 / (var + eps).sqrt();
        for (i, v) in row.iter().enumerate() {
            y.data[r * d + i] = (v - mean) * inv * w.data[i] + b.data[i];
        }
    }
    y
}

/// GELU, tanh approximation.
pub fn gelu(x: &T) -> T {
    x.map(gelu_scalar)
}

/// GELU, tanh approximation (PyTorch's `approximate="tanh"`).
pub fn gelu_scalar(v: f64) -> f64 {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    0.5 * v * (1.0 + (c * (v + 0.044715 * v * v * v)).tanh())
}

pub fn sigmoid(x: &T) -> T {
    x.map(|v| 1.0 / (1.0 + (-v).exp()))
}

/// [N, C, H, W] -> [N, L, C*ph*pw]: patches row-major, each flattened (c, py, px).
pub fn patchify(x: &T, ph: usize, pw: usize) -> T {
    let (n, c, h, w) = (x.dim(0), x.dim(1), x.dim(2), x.dim(3));
    let (gh, gw) = (h / ph, w / pw);
    let f = c * ph * pw;
    let mut y = T::zeros(&[n, gh * gw, f]);
    for b in 0..n {
        for gy in 0..gh {
            for gx in 0..gw {
                let l = gy * gw + gx;
                for ch in 0..c {
                    for py in 0..ph {
                        for px in 0..pw {
                            y.data[(b * gh * gw + l) * f + (ch * ph + py) * pw + px] =
                                x.data[((b * c + ch) * h + gy * ph + py) * w + gx * pw + px];
                        }
                    }
                }
            }
        }
    }
    y
}

/// Multi-head self-attention, PyTorch in_proj layout: qkv = x·Wᵀ + b splits into q | k | v
/// of width D each, and head h owns columns h*Dh..(h+1)*Dh of each; scale 1/sqrt(Dh).
pub fn mha(x: &T, qkv_w: &T, qkv_b: &T, out_w: &T, out_b: &T, heads: usize) -> T {
    let (n, l, d) = (x.dim(0), x.dim(1), x.dim(2));
    let dh = d / heads;
    let qkv = linear(x, qkv_w, Some(qkv_b)); // [N, L, 3D]
    let at = |b: usize, t: usize, part: usize, h: usize, i: usize| qkv.data[(b * l + t) * 3 * d + part * d + h * dh + i];
    let scale = 1.0 / (dh as f64).sqrt();
    let mut o = T::zeros(&[n, l, d]);
    for b in 0..n {
        for h in 0..heads {
            for tq in 0..l {
                let s: Vec<f64> = (0..l).map(|tk| (0..dh).map(|i| at(b, tq, 0, h, i) * at(b, tk, 1, h, i)).sum::<f64>() * scale).collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                for i in 0..dh {
                    o.data[(b * l + tq) * d + h * dh + i] = (0..l).map(|tk| e[tk] / z * at(b, tk, 2, h, i)).sum();
                }
            }
        }
    }
    linear(&o, out_w, Some(out_b))
}

/// [N, L, D] -> [N, D] mean over tokens.
pub fn mean_tokens(x: &T) -> T {
    let (n, l, d) = (x.dim(0), x.dim(1), x.dim(2));
    let mut y = T::zeros(&[n, d]);
    for b in 0..n {
        for t in 0..l {
            for i in 0..d {
                y.data[b * d + i] += x.data[(b * l + t) * d + i] / l as f64;
            }
        }
    }
    y
}

fn join(a: &str, b: &str) -> String {
    if a.is_empty() {
        b.to_string()
    } else {
        format!("{a}.{b}")
    }
}

// ---- encoders --------------------------------------------------------------------------------

/// Batch norm layer `name` (weight, bias, running_mean, running_var), updating the
/// running stats in `bufs` in training mode.
pub fn bn_layer(p: &Named, bufs: &mut Named, name: &str, x: &T, training: bool) -> T {
    let w = get(p, &join(name, "weight")).clone();
    let b = get(p, &join(name, "bias")).clone();
    let mut rm = get(bufs, &join(name, "running_mean")).clone();
    let mut rv = get(bufs, &join(name, "running_var")).clone();
    let y = batch_norm(x, &w, &b, &mut rm, &mut rv, training, 0.1, 1e-5);
    bufs.insert(join(name, "running_mean"), rm);
    bufs.insert(join(name, "running_var"), rv);
    y
}

/// torchvision BasicBlock: relu(bn2(conv2(relu(bn1(conv1(x))))) + downsample(x)).
pub fn basic_block(p: &Named, bufs: &mut Named, name: &str, x: &T, stride: usize, training: bool) -> T {
    let h = conv2d(x, get(p, &join(name, "conv1.weight")), stride, 1);
    let h = relu(&bn_layer(p, bufs, &join(name, "bn1"), &h, training));
    let h = conv2d(&h, get(p, &join(name, "conv2.weight")), 1, 1);
    let h = bn_layer(p, bufs, &join(name, "bn2"), &h, training);
    let skip = match p.get(&join(name, "downsample.0.weight")) {
        Some(w) => bn_layer(p, bufs, &join(name, "downsample.1"), &conv2d(x, w, stride, 0), training),
        None => x.clone(),
    };
    relu(&add(&h, &skip))
}

/// ResNet18 trunk: (pooled features, [stem after max pool, layer1, .., layer4]).
pub fn resnet18(p: &Named, bufs: &mut Named, name: &str, x: &T, training: bool) -> (T, Vec<T>) {
    let h = conv2d(x, get(p, &join(name, "conv1.weight")), 2, 3);
    let h = relu(&bn_layer(p, bufs, &join(name, "bn1"), &h, training));
    let mut outs = vec![max_pool2d(&h, 3, 2, 1)];
    for i in 0..4 {
        let mut h = outs.last().unwrap().clone();
        for j in 0..2 {
            let stride = if i > 0 && j == 0 { 2 } else { 1 };
            h = basic_block(p, bufs, &format!("{}.{j}", join(name, &format!("layer{}", i + 1))), &h, stride, training);
        }
        outs.push(h);
    }
    (global_avg_pool(outs.last().unwrap()), outs)
}

/// Pre-norm transformer encoder: tokens = embed(patchify(x) or x) + pos; per block
/// x += MHA(LN1(x)); x += fc2(GELU(fc1(LN2(x)))); pooled = mean_tokens(LN(x)).
pub fn transformer(p: &Named, name: &str, x: &T, layers: usize, heads: usize, patch: (usize, usize)) -> (T, Vec<T>) {
    let seq = if x.shape.len() == 4 { patchify(x, patch.0, patch.1) } else { x.clone() };
    let g = |s: &str| get(p, &join(name, s));
    let mut h = linear(&seq, g("embed.weight"), Some(g("embed.bias")));
    let pos = g("pos");
    let per = pos.data.len();
    for (i, v) in h.data.iter_mut().enumerate() {
        *v += pos.data[i % per];
    }
    let mut outs = Vec::new();
    for b in 0..layers {
        let bn = |s: &str| get(p, &join(name, &format!("blocks.{b}.{s}")));
        let a = layer_norm(&h, bn("ln1.weight"), bn("ln1.bias"), 1e-5);
        let a = mha(&a, bn("attn.qkv.weight"), bn("attn.qkv.bias"), bn("attn.out.weight"), bn("attn.out.bias"), heads);
        h = add(&h, &a);
        let m = layer_norm(&h, bn("ln2.weight"), bn("ln2.bias"), 1e-5);
        let m = gelu(&linear(&m, bn("fc1.weight"), Some(bn("fc1.bias"))));
        let m = linear(&m, bn("fc2.weight"), Some(bn("fc2.bias")));
        h = add(&h, &m);
        outs.push(h.clone());
    }
    (mean_tokens(&layer_norm(&h, g("ln.weight"), g("ln.bias"), 1e-5)), outs)
}

/// `nn::SmallCnn`: per block conv3×3 (stride 1, pad 1, no bias) → batch norm → ReLU →
/// 2×2 max pool (stride 2) while the map is at least 2×2; pooled = global average.
/// Returns (pooled, [output of each block]).
pub fn small_cnn(p: &Named, bufs: &mut Named, name: &str, x: &T, depth: usize, training: bool) -> (T, Vec<T>) {
    let mut h = x.clone();
    let mut outs = Vec::new();
    for i in 0..depth {
        let b = join(name, &format!("block{i}"));
        h = conv2d(&h, get(p, &join(&b, "conv.weight")), 1, 1);
        h = relu(&bn_layer(p, bufs, &join(&b, "bn"), &h, training));
        if h.dim(2) >= 2 && h.dim(3) >= 2 {
            h = max_pool2d(&h, 2, 2, 0);
        }
        outs.push(h.clone());
    }
    (global_avg_pool(&h), outs)
}

/// `nn::MlpEncoder`: flatten per sample, then Linear → ReLU per layer (the last included).
/// Returns (output, [output of each layer]).
pub fn mlp(p: &Named, name: &str, x: &T, layers: usize) -> (T, Vec<T>) {
    let n = x.dim(0);
    let mut h = T::new(&[n, x.data.len() / n], x.data.clone());
    let mut outs = Vec::new();
    for i in 0..layers {
        let l = join(name, &format!("fc{i}"));
        h = relu(&linear(&h, get(p, &join(&l, "weight")), Some(get(p, &join(&l, "bias")))));
        outs.push(h.clone());
    }
    (h.clone(), outs)
}
