//! Batch tags of the ops whose effect on dimension 0 depends on their shape arguments: layout
//! (reshape, expand, slice, swap, permute, flip), indexing (gather, select, scatter) and matmul.
//! Used by the generated `ops/` for every tensor kind and by `intercept.rs` for floats.
//!
//! `float` says whether the tensor is a float (or quantized) one: a float host tensor may be a
//! loaded parameter, so a layout op that moves its dimension 0 (`gamma.unsqueeze()`,
//! `W.transpose()`) treats it as a shared operand ([`Tag::shared`]: it stays
//! [`Tag::Unmarked`] with its original rows); int and bool host data (masks, labels, ids) are
//! never parameters, and moving their rows is combining them ([`Tag::mix`]). Float data that is
//! per sample is marked with [`crate::batch`], and then every move of dimension 0 mixes.

use burn_backend::{Shape, Slice};

use super::primitive::Tag;

fn full_slice(s: &Slice, size: usize) -> bool {
    s.step == 1 && s.to_range(size) == (0..size)
}

/// `reshape(old → new)`: keeping dimension 0 keeps the tag; anything else moves its rows.
pub fn reshape(old: &Shape, new: &Shape, tag: Tag, float: bool, op: &'static str) -> Tag {
    let (o, n) = (old.as_slice(), new.as_slice());
    if !o.is_empty() && !n.is_empty() && o[0] == n[0] {
        return tag;
    }
    moved(tag, float, op)
}

/// The tag of a tensor whose dimension 0 a layout op moved.
fn moved(tag: Tag, float: bool, op: &'static str) -> Tag {
    if float {
        tag.shared(op)
    } else {
        tag.mix(op)
    }
}

/// `expand(old → new)`: broadcasting size-1 dimensions after the first keeps the tag.
pub fn expand(old: &Shape, new: &Shape, tag: Tag, float: bool, op: &'static str) -> Tag {
    let (o, n) = (old.as_slice(), new.as_slice());
    if o.len() == n.len() && !o.is_empty() && o[0] == n[0] {
        return tag;
    }
    moved(tag, float, op)
}

/// `slice`: a slice of dimension 0 other than all of it drops or reorders rows.
pub fn slice(shape: &Shape, slices: &[Slice], tag: Tag, op: &'static str) -> Tag {
    let keeps = slices
        .first()
        .is_none_or(|s| shape.num_dims() == 0 || full_slice(s, shape[0]));
    if keeps {
        tag
    } else {
        tag.mix(op)
    }
}

/// `slice_assign(tensor, slices, value)`: `value`'s rows land on other rows unless the slice
/// covers all of dimension 0.
pub fn slice_assign(
    shape: &Shape,
    slices: &[Slice],
    tag: Tag,
    value: Tag,
    op: &'static str,
) -> Tag {
    tag.join(slice(shape, slices, value, op))
}

/// `swap_dims(dim1, dim2)`.
pub fn swap_dims(dim1: usize, dim2: usize, tag: Tag, float: bool, op: &'static str) -> Tag {
    if dim1 != dim2 && (dim1 == 0 || dim2 == 0) {
        moved(tag, float, op)
    } else {
        tag
    }
}

/// `transpose` (the last two dimensions) of a tensor of rank `rank`.
pub fn transpose(rank: usize, tag: Tag, float: bool, op: &'static str) -> Tag {
    if rank >= 2 {
        swap_dims(rank - 2, rank - 1, tag, float, op)
    } else {
        tag
    }
}

/// `permute(axes)`: dimension 0 must stay first.
pub fn permute(axes: &[usize], tag: Tag, float: bool, op: &'static str) -> Tag {
    if axes.first().is_some_and(|&a| a != 0) {
        moved(tag, float, op)
    } else {
        tag
    }
}

/// `flip(axes)`: flipping dimension 0 reverses the rows.
pub fn flip(axes: &[usize], tag: Tag, op: &'static str) -> Tag {
    if axes.contains(&0) {
        tag.mix(op)
    } else {
        tag
    }
}

/// `gather(dim, tensor, indices)`: `out[i][j] = tensor[indices[i][j]][j]` along 0 reads any row
/// of `tensor` (mixed) at the row `i` of `indices`; along another dimension row `i` reads row `i`.
pub fn gather(dim: usize, tensor: Tag, indices: Tag, op: &'static str) -> Tag {
    tensor.along_dim(dim, op).join(indices)
}

/// `scatter(dim, tensor, indices, value)`: along 0, rows of `value` land on rows chosen by
/// `indices`; along another dimension row `i` goes to row `i`.
pub fn scatter(dim: usize, tensor: Tag, indices: Tag, value: Tag, op: &'static str) -> Tag {
    tensor.join(indices.join(value).along_dim(dim, op))
}

/// `select(tensor, dim, indices)` with 1-D `indices`: along 0, output row `k` is row
/// `indices[k]` of `tensor`; along another dimension every row reads all of `indices`.
pub fn select(dim: usize, tensor: Tag, indices: Tag, op: &'static str) -> Tag {
    if dim == 0 {
        tensor.mix(op).join(indices)
    } else {
        tensor.join(indices.mix(op))
    }
}

/// `select_assign/add(tensor, dim, indices, value)`: along 0, row `k` of `value` lands on row
/// `indices[k]`; along another dimension every row reads all of `indices`.
pub fn select_assign(dim: usize, tensor: Tag, indices: Tag, value: Tag, op: &'static str) -> Tag {
    if dim == 0 {
        tensor.join(indices.join(value).mix(op))
    } else {
        tensor.join(indices.mix(op)).join(value)
    }
}

/// `matmul(lhs, rhs)`: a rank-2 right-hand side is contracted along its dimension 0 and an
/// operand of lower rank than the result is broadcast over the leading dimensions: both are
/// shared operands.
pub fn matmul(lhs: &Shape, rhs: &Shape, tl: Tag, tr: Tag, float: bool, op: &'static str) -> Tag {
    let shared = |t: Tag| if float { t.shared(op) } else { t.mix(op) };
    let out = lhs.num_dims().max(rhs.num_dims());
    let tl = if lhs.num_dims() < out { shared(tl) } else { tl };
    let tr = if rhs.num_dims() == 2 || rhs.num_dims() < out {
        shared(tr)
    } else {
        tr
    };
    tl.join(tr)
}
