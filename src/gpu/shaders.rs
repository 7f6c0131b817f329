//! Every WGSL module the engine compiles, named by a typed key. [`Shader::source`] is the
//! one place a key meets its text, so one name can never map to two sources; the kernel
//! cache keys modules and pipelines by [`Shader`].
//!
//! Each module is `shaders/common.wgsl` (helpers every kernel family shares: the
//! one-thread-per-element workgroup size and the folded-grid index) followed by the
//! family's own file. The attention family is instantiated per padded head dim: the `const`
//! block between `@variant-begin` and `@variant-end` in `shaders/attention.wgsl` is replaced
//! by the tile sizes of [`AttentionTiles`] (the file itself is the 128 instantiation).
use crate::error::{Error, Result};
use std::sync::OnceLock;

/// Threads per workgroup of the one-thread-per-element kernels (`WG` in
/// `shaders/common.wgsl`; the interface test checks that the two agree).
pub const WG: u32 = 256;

const COMMON: &str = include_str!("../../shaders/common.wgsl");

macro_rules! with_common {
    ($file:literal) => {
        concat!(include_str!("../../shaders/common.wgsl"), include_str!(concat!("../../shaders/", $file)))
    };
}

/// Padded head dim of an attention instantiation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HeadDim {
    /// Head dim up to 32.
    D32,
    /// Head dim 33 to 64.
    D64,
    /// Head dim 65 to 128.
    D128,
}

/// A WGSL module: one kernel family (`shaders/<name>.wgsl`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Shader {
    /// `aim.wgsl`: AIM/PAM's selection of the lowest-scored elements (GPU radix select) and the
    /// auxiliary blocks' weight scales.
    Aim,
    /// `attention.wgsl`, instantiated per padded head dim.
    Attention(HeadDim),
    /// `boost.wgsl`: AUG's fused residual-boosting loss and its gradient.
    Boost,
    /// `canary.wgsl`: checks pool slack in the canary test mode.
    Canary,
    /// `copy.wgsl`: word copies between two ranges of one segment (where a buffer-to-buffer
    /// copy is not allowed).
    Copy,
    /// `conv.wgsl`: 2-D convolution as implicit GEMM, and its gradients.
    Conv,
    /// `elementwise.wgsl`: unary maps, broadcasting binary ops, their backward rules, f32/f16
    /// casts.
    Elementwise,
    /// `embed.wgsl`: embedding lookup, patchify, and their gradients.
    Embed,
    /// `matmul.wgsl`: batched, tiled matrix products (optional transposes, scales, bias).
    Matmul,
    /// `norm.wgsl`: batch and layer normalisation, and their gradients.
    Norm,
    /// `optim.wgsl`: fused SGD and Adam updates (and the AIM/PAM optimisation-state score).
    Optim,
    /// `pool.wgsl`: max pooling and adaptive average pooling, and their gradients.
    Pool,
    /// `random.wgsl`: counter-based random numbers (Philox): uniform, normal, dropout.
    Random,
    /// `reduce.wgsl`: reductions over the middle axis of `[outer, r, inner]`.
    Reduce,
    /// `shape.wgsl`: slab copies (concat, split, narrow), permute, transpose, row gather and its
    /// scatter-add.
    Shape,
    /// `softmax.wgsl`: row-wise softmax, log-softmax, fused cross-entropy, true-class probability,
    /// argmax.
    Softmax,
}

impl Shader {
    /// Every module, every attention instantiation included.
    pub const ALL: [Shader; 18] = [
        Shader::Aim,
        Shader::Attention(HeadDim::D32),
        Shader::Attention(HeadDim::D64),
        Shader::Attention(HeadDim::D128),
        Shader::Boost,
        Shader::Canary,
        Shader::Copy,
        Shader::Conv,
        Shader::Elementwise,
        Shader::Embed,
        Shader::Matmul,
        Shader::Norm,
        Shader::Optim,
        Shader::Pool,
        Shader::Random,
        Shader::Reduce,
        Shader::Shape,
        Shader::Softmax,
    ];

    /// The module's label (its file name without extension; attention with its head dim).
    pub fn name(self) -> &'static str {
        match self {
            Shader::Aim => "aim",
            Shader::Attention(HeadDim::D32) => "attention_d32",
            Shader::Attention(HeadDim::D64) => "attention_d64",
            Shader::Attention(HeadDim::D128) => "attention_d128",
            Shader::Boost => "boost",
            Shader::Canary => "canary",
            Shader::Conv => "conv",
            Shader::Copy => "copy",
            Shader::Elementwise => "elementwise",
            Shader::Embed => "embed",
            Shader::Matmul => "matmul",
            Shader::Norm => "norm",
            Shader::Optim => "optim",
            Shader::Pool => "pool",
            Shader::Random => "random",
            Shader::Reduce => "reduce",
            Shader::Shape => "shape",
            Shader::Softmax => "softmax",
        }
    }

    /// The WGSL text compiled for this module (common helpers included).
    pub fn source(self) -> Result<&'static str> {
        Ok(match self {
            Shader::Aim => with_common!("aim.wgsl"),
            Shader::Attention(d) => return attention_source(d),
            Shader::Boost => with_common!("boost.wgsl"),
            Shader::Canary => with_common!("canary.wgsl"),
            Shader::Conv => with_common!("conv.wgsl"),
            Shader::Copy => with_common!("copy.wgsl"),
            Shader::Elementwise => with_common!("elementwise.wgsl"),
            Shader::Embed => with_common!("embed.wgsl"),
            Shader::Matmul => with_common!("matmul.wgsl"),
            Shader::Norm => with_common!("norm.wgsl"),
            Shader::Optim => with_common!("optim.wgsl"),
            Shader::Pool => with_common!("pool.wgsl"),
            Shader::Random => with_common!("random.wgsl"),
            Shader::Reduce => with_common!("reduce.wgsl"),
            Shader::Shape => with_common!("shape.wgsl"),
            Shader::Softmax => with_common!("softmax.wgsl"),
        })
    }
}

/// Tile sizes of one attention instantiation (the WGSL `@variant` block). Chosen so every
/// entry point needs at most ~29 KiB of workgroup memory (fits the common 32 KiB limit).
#[derive(Clone, Copy, Debug)]
pub struct AttentionTiles {
    /// Which instantiation these tiles belong to.
    pub head_dim: HeadDim,
    /// The padded head dim as a number (32, 64 or 128).
    pub dh: u32,
    /// Forward pass: query rows per workgroup.
    pub f_bq: u32,
    /// Forward pass: keys per tile.
    pub f_bk: u32,
    /// dq pass: query rows per workgroup.
    pub q_bq: u32,
    /// dq pass: keys per tile.
    pub q_bk: u32,
    /// dk/dv pass: keys per workgroup.
    pub kv_bk: u32,
    /// dk/dv pass: query rows per tile.
    pub kv_bq: u32,
}

/// The instantiations, smallest head dim first.
pub const ATTENTION_TILES: [AttentionTiles; 3] = [
    AttentionTiles { head_dim: HeadDim::D32, dh: 32, f_bq: 32, f_bk: 64, q_bq: 32, q_bk: 32, kv_bk: 32, kv_bq: 32 },
    AttentionTiles { head_dim: HeadDim::D64, dh: 64, f_bq: 32, f_bk: 32, q_bq: 32, q_bk: 32, kv_bk: 32, kv_bq: 16 },
    AttentionTiles { head_dim: HeadDim::D128, dh: 128, f_bq: 32, f_bk: 16, q_bq: 16, q_bk: 16, kv_bk: 16, kv_bq: 8 },
];

impl AttentionTiles {
    /// The smallest instantiation whose padded head dim holds `dh`.
    pub fn for_head_dim(dh: usize) -> Option<AttentionTiles> {
        ATTENTION_TILES.iter().find(|t| dh <= t.dh as usize).copied()
    }

    /// The module of this instantiation.
    pub fn shader(&self) -> Shader {
        Shader::Attention(self.head_dim)
    }

    /// The const block substituted into the template.
    pub fn header(&self) -> String {
        format!(
            "const DH: u32 = {}u;\nconst F_BQ: u32 = {}u;\nconst F_BK: u32 = {}u;\nconst Q_BQ: u32 = {}u;\n\
             const Q_BK: u32 = {}u;\nconst KV_BK: u32 = {}u;\nconst KV_BQ: u32 = {}u;\n",
            self.dh, self.f_bq, self.f_bk, self.q_bq, self.q_bk, self.kv_bk, self.kv_bq
        )
    }

    /// Workgroup memory (bytes) of each tiled entry point: fwd, dq, dkv.
    pub fn workgroup_bytes(&self) -> [u32; 3] {
        let ds = self.dh + 1;
        let fwd = self.f_bq * ds + self.f_bk * ds + self.f_bq * (self.f_bk + 1);
        let dq = 2 * self.q_bq * ds + self.q_bk * ds + self.q_bq * (self.q_bk + 1);
        let dkv = 2 * self.kv_bk * ds + 2 * self.kv_bq * ds + 2 * self.kv_bk * (self.kv_bq + 1) + 2 * self.kv_bq;
        [fwd * 4, dq * 4, dkv * 4]
    }
}

/// WGSL of an attention instantiation (built once; `'static` for the kernel cache).
fn attention_source(d: HeadDim) -> Result<&'static str> {
    static SOURCES: [OnceLock<std::result::Result<String, String>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
    let i = ATTENTION_TILES.iter().position(|t| t.head_dim == d).unwrap_or(0);
    let src = SOURCES[i].get_or_init(|| {
        let template = include_str!("../../shaders/attention.wgsl");
        let (begin, end) = ("// @variant-begin", "// @variant-end");
        let (a, b) = match (template.find(begin), template.find(end)) {
            (Some(a), Some(b)) if a < b => (a, b),
            _ => return Err("shaders/attention.wgsl lacks its @variant-begin/@variant-end block".to_string()),
        };
        Ok(format!("{COMMON}{}{}\n{}{}", &template[..a], begin, ATTENTION_TILES[i].header(), &template[b..]))
    });
    src.as_deref().map_err(|e| Error::Other(e.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The template's own block must be the DH = 128 instantiation, and every substituted
    /// source must keep the same structure.
    #[test]
    fn attention_template_is_the_128_instantiation() {
        let template = include_str!("../../shaders/attention.wgsl");
        let a = template.find("// @variant-begin").unwrap();
        let b = template.find("// @variant-end").unwrap();
        let block: String = template[a..b]
            .lines()
            .filter(|l| l.starts_with("const "))
            .map(|l| l.split("//").next().unwrap().trim().to_string() + "\n")
            .collect();
        assert_eq!(block, ATTENTION_TILES[2].header());
        for t in ATTENTION_TILES {
            let s = t.shader().source().unwrap();
            assert!(s.starts_with(COMMON));
            assert!(s.contains(&format!("const DH: u32 = {}u;", t.dh)));
            assert!(t.workgroup_bytes().iter().all(|&b| b <= 32 * 1024), "{t:?}");
        }
    }
}
