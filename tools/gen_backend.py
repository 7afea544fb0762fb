#!/usr/bin/env python3
"""Generates crates/burn-dp/src/backend/delegate.rs: the PerSample backend's forwarding of every
backend op to the inner backend, with batch-tag propagation.

Run `python3 tools/sigs.py && python3 tools/gen_backend.py` after changing the burn version.
Ops listed in MANUAL are forwarded to hand-written functions in `backend/intercept.rs` (the
explicit list of intercepted ops); everything else is generated here.
"""
import json, re

sigs = json.load(open('/tmp/sigs.json'))

# Ops implemented by hand in backend/intercept.rs (same signature, `Self` as backend).
MANUAL = {
    # per-sample rules (backward)
    'linear_weight_backward', 'linear_bias_backward', 'conv1d_weight_backward', 'conv1d_bias_backward',
    'conv2d_weight_backward', 'conv2d_bias_backward', 'embedding_backward',
    # forward: data enters the model
    'embedding',
    # deferred-aware structural ops
    'float_add', 'float_sub', 'float_sum_dim', 'float_reshape', 'float_swap_dims', 'float_permute',
    'float_transpose', 'float_mul', 'float_div', 'float_neg', 'float_mul_scalar', 'float_div_scalar',
    'float_expand', 'float_slice', 'float_slice_assign',
    # tags that need shapes
    'float_matmul', 'float_flip',
    # metadata / data movement that must not lose deferred gradients
    'float_into_data', 'float_device', 'float_to_device', 'float_is_require_grad',
    # ops returning structs holding tensors
    'max_pool1d_with_indices', 'max_pool1d_with_indices_backward', 'max_pool2d_with_indices',
    'max_pool2d_with_indices_backward', 'deform_conv2d_backward', 'quantize',
}
# Full reductions: every sample ends in one value.
FULL_REDUCE = {'float_sum', 'float_prod', 'float_mean', 'float_max', 'float_min', 'float_max_abs',
               'float_any', 'float_all'}
# Ops whose `dim` argument means "along this dimension" -- all of them; listed for clarity of the rule.
SKIP_TRAITS_DEFAULTS = {'QTensorOps', 'TransactionOps'}

def split_args(s):
    out, depth, cur = [], 0, ''
    for c in s:
        if c in '<([': depth += 1
        if c in '>)]': depth -= 1
        if c == ',' and depth == 0:
            out.append(cur.strip()); cur = ''
        else:
            cur += c
    if cur.strip(): out.append(cur.strip())
    return out

def parse(sig):
    m = re.match(r'fn (\w+)\s*\(', sig)
    name = m.group(1)
    i = m.end(); depth = 1; j = i
    while depth:
        if sig[j] == '(': depth += 1
        elif sig[j] == ')': depth -= 1
        j += 1
    args = sig[i:j-1]
    rest = sig[j:].strip()
    ret = rest[2:].strip() if rest.startswith('->') else ''
    args = [a for a in split_args(args)]
    parsed = []
    for a in args:
        n, t = a.split(':', 1)
        parsed.append((n.strip(), t.strip()))
    return name, parsed, ret

def selfify(t):
    return re.sub(r'<B>', '<Self>', t).replace('crate::tensor::', 'burn_backend::tensor::')

def gen_method(trait, s):
    name, args, ret = parse(s['sig'])
    sig_txt = selfify(s['sig'])
    if name in MANUAL:
        call = ', '.join(n for n, _ in args)
        return f'    {sig_txt} {{\n        intercept::{name}::<B>({call})\n    }}\n'
    has_float = 'FloatTensor' in s['sig'] or 'QuantizationParametersPrimitive' in s['sig']
    if trait in SKIP_TRAITS_DEFAULTS and s['default']:
        return None
    if 'TransactionPrimitive' in s['sig']:
        return None
    if 'impl Future' in ret and not has_float:
        call = ', '.join(n for n, _ in args)
        return f'    {sig_txt} {{\n        B::{name}({call})\n    }}\n'
    lines = []
    tags = []
    call_args = []
    for n, t in args:
        if t == 'FloatTensor<B>':
            lines.append(f'let ({n}, t_{n.lstrip("_")}) = {n}.into_dense("{name}");')
            tags.append(f't_{n.lstrip("_")}')
        elif t == 'Option<FloatTensor<B>>':
            lines.append(f'let ({n}, t_{n.lstrip("_")}) = opt_dense({n}, "{name}");')
            tags.append(f't_{n.lstrip("_")}')
        elif t == 'Vec<FloatTensor<B>>':
            lines.append(f'let ({n}, t_{n.lstrip("_")}) = vec_dense({n}, "{name}");')
            tags.append(f't_{n.lstrip("_")}')
        elif 'FloatTensor' in t:
            raise SystemExit(f'unhandled arg type {t} in {name}')
        call_args.append(n)
    call = f'B::{name}({", ".join(call_args)})'
    if 'FloatTensor' not in ret:
        if not tags:
            return f'    {sig_txt} {{\n        {call}\n    }}\n'
        body = '\n        '.join(lines + [call])
        return f'    {sig_txt} {{\n        {body}\n    }}\n'
    tag = f'Tag::join_all(&[{", ".join(tags)}])' if tags else 'Tag::Independent'
    lines.append(f'let tag = {tag};')
    if any(n == 'dim' for n, _ in args):
        lines.append(f'let tag = tag.along_dim(dim, "{name}");')
    if name in FULL_REDUCE:
        lines.append(f'let tag = tag.mix("{name}");')
    if ret == 'FloatTensor<B>':
        lines.append(f'PsTensor::dense({call}, tag)')
    elif ret == '(FloatTensor<B>, IntTensor<B>)':
        lines.append(f'let (a, b) = {call};')
        lines.append('(PsTensor::dense(a, tag), b)')
    elif ret == '(FloatTensor<B>, FloatTensor<B>)':
        lines.append(f'let (a, b) = {call};')
        lines.append('(PsTensor::dense(a, tag), PsTensor::dense(b, tag))')
    else:
        raise SystemExit(f'unhandled return {ret} in {name}')
    body = '\n        '.join(lines)
    return f'    {sig_txt} {{\n        {body}\n    }}\n'

out = ['// @generated by tools/gen_backend.py from burn-backend 0.21.0 -- do not edit by hand.',
       '//! Forwarding of every backend op of [`PerSample`] to the inner backend, with tag propagation.',
       '#![allow(unused_variables, clippy::too_many_arguments)]',
       'use super::intercept;',
       'use super::primitive::{opt_dense, vec_dense, PsTensor, Tag};',
       'use super::PerSample;',
       'use burn_backend::ops::*;',
       'use burn_backend::tensor::*;',
       'use burn_backend::quantization::QuantScheme;',
       'use burn_backend::{Backend, Distribution, ExecutionError, Scalar, TensorData};',
       'use burn_backend::{BoolDType, FloatDType, IntDType, Shape, Slice};',
       'use burn_backend::quantization::QuantizationParametersPrimitive;',
       'use core::future::Future;',
       'use core::ops::Range;',
       '']
for trait, ss in sigs.items():
    out.append(f'impl<B: Backend> {trait}<Self> for PerSample<B> {{')
    for s in ss:
        g = gen_method(trait, s)
        if g: out.append(g)
    out.append('}\n')
open('crates/burn-dp/src/backend/delegate.rs', 'w').write('\n'.join(out))
print('ok')
