#!/usr/bin/env python3
"""Generates crates/burn-dp/src/backend/ops/: the PerSample backend's forwarding of every backend op
to the inner backend, with batch-tag propagation, one file per backend op trait (as burn-autodiff's
`src/ops/`).

    python3 tools/gen_backend.py           # regenerate the files
    python3 tools/gen_backend.py --check   # exit 1 if the committed files differ from a generation

The trait sources are burn-backend's own, found through `cargo metadata` (the manifest path of the
`burn-backend` package the workspace resolves); the output is formatted with rustfmt and the
repository's rustfmt.toml, so a fresh generation is byte-identical to the committed files.

Ops listed in HAND_WRITTEN are forwarded to hand-written functions in `backend/intercept.rs`;
everything else is generated here. The ops a per-sample rule may intercept (HOOKED: the `op:` rows
of the rule table `crates/burn-dp/src/rules/table.rs`, read from its source, and every parameter
gradient op `*_weight_backward` / `*_bias_backward` of `ModuleOps`) get a hook that offers the call
to the rules (`rules::dispatch`) before forwarding it; their list is written to `ops/mod.rs` as
`HOOKED_OPS`. So the set of ops that are not plain forwarding (HAND_WRITTEN and HOOKED) is
derived from the rule table: a new rule row cannot miss its hook.
"""
import argparse
import difflib
import json
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT_DIR = os.path.join('crates', 'burn-dp', 'src', 'backend', 'ops')
BURN_BACKEND_VERSION = '0.21.0'

# (trait, source file under burn-backend's src/backend/ops, generated file under OUT_DIR)
TRAITS = [
    ('FloatTensorOps', 'tensor.rs', 'tensor.rs'),
    ('IntTensorOps', 'int_tensor.rs', 'int_tensor.rs'),
    ('BoolTensorOps', 'bool_tensor.rs', 'bool_tensor.rs'),
    ('ModuleOps', 'modules/base.rs', 'module.rs'),
    ('ActivationOps', 'activation.rs', 'activation.rs'),
    ('QTensorOps', 'qtensor.rs', 'qtensor.rs'),
    ('TransactionOps', 'transaction.rs', 'transaction.rs'),
]

RULE_TABLE = os.path.join('crates', 'burn-dp', 'src', 'rules', 'table.rs')

# Ops implemented by hand in backend/intercept.rs (same signature, `Self` as backend).
HAND_WRITTEN = {
    # forward: data enters the model
    'embedding',
    # deferred-aware structural ops (`float_sum_dim` also offers `sum_dim(., 0)` to the rules)
    'float_add', 'float_sub', 'float_sum_dim', 'float_reshape', 'float_swap_dims', 'float_permute',
    'float_transpose', 'float_mul', 'float_div', 'float_neg', 'float_mul_scalar', 'float_div_scalar',
    'float_expand', 'float_slice', 'float_slice_assign', 'float_flip',
    # tags that need shapes; products with an empty operand never reach the backend
    'float_matmul', 'linear',
    # metadata / data movement that must not lose deferred gradients
    'float_into_data', 'float_device', 'float_to_device', 'float_is_require_grad',
    # ops returning structs holding tensors
    'max_pool1d_with_indices', 'max_pool1d_with_indices_backward', 'max_pool2d_with_indices',
    'max_pool2d_with_indices_backward', 'deform_conv2d_backward', 'quantize',
}
# Hand-written ops that call `rules::dispatch` themselves.
HAND_WRITTEN_HOOKS = {'float_sum_dim'}


def rule_table_ops():
    """The ops of the rule table, read from its Rust source (`op: "name"` in `rule_table!`)."""
    with open(os.path.join(ROOT, RULE_TABLE)) as f:
        src = f.read()
    body = src[src.index('rule_table! {'):]
    ops = re.findall(r'\bop:\s*"(\w+)"', body)
    if not ops:
        raise SystemExit(f'no `op:` rows in {RULE_TABLE}')
    return set(ops)


def is_parameter_gradient_op(trait, name):
    """A `ModuleOps` op that returns a parameter's gradient: open to rules from other crates."""
    return trait == 'ModuleOps' and (name.endswith('_weight_backward')
                                     or name.endswith('_bias_backward'))


RULE_OPS = rule_table_ops()
HOOKED = set()  # filled by generate(): RULE_OPS and the parameter gradient ops

# Traits whose provided (default) methods are kept as burn-backend wrote them (they call the
# other ops of the trait, which are tagged).
SKIP_TRAITS_DEFAULTS = {'QTensorOps', 'TransactionOps'}

# ---------------------------------------------------------------- tag rules
#
# Every generated op returns its inputs' tags joined (`Tag::join_all`), then:
# - an op with a `dim` argument works along that dimension: along 0 it mixes (`Tag::along_dim`);
# - FULL_REDUCE ops (no `dim`) reduce every row into one value: they mix;
# - ops named in LAYOUT take their tag from `backend/layout.rs`, which reads their shape arguments;
# - module ops read their shared operands (weights, biases, scales) with `Tag::shared`;
# - ALWAYS_MIX ops reorder or combine rows whatever their arguments.
# An argument that could name a dimension (dim1, axes, shape, slices, ...) in an op without a
# rule here stops the generator: a new op in burn-backend must get a rule before it is forwarded.

FULL_REDUCE = {'sum', 'prod', 'mean', 'max', 'min', 'max_abs', 'any', 'all'}
ALWAYS_MIX = {'gather_nd', 'scatter_nd', 'argwhere', 'nonzero', 'ctc_loss', 'ctc_loss_backward'}
# Module ops' shared operands: one value for the whole batch.
SHARED_ARGS = {'weight', 'bias', 'gamma', 'beta', 'weights', 'alpha'}
# Dimension-free non-tensor arguments.
PLAIN_ARGS = {
    'dim', 'data', 'device', 'dtype', 'out_dtype', 'indices_dtype', 'distribution', 'fill_value',
    'rhs', 'value', 'min', 'max', 'alpha', 'beta', 'negative_slope', 'epsilon', 'descending',
    'times', 'k', 'size', 'step', 'n', 'range', 'blank', '_blank', 'kernel_size', 'stride',
    'padding', 'dilation', 'output_size', 'ceil_mode', 'count_include_pad', 'options',
    '_require_grad', 'scheme', '_reduction',
}
TENSOR_TYPES = {
    'FloatTensor<B>': 'float', 'IntTensor<B>': 'int', 'BoolTensor<B>': 'bool',
    'QuantizedTensor<B>': 'quant',
}


def stem(name):
    for prefix in ('float_', 'int_', 'bool_', 'q_'):
        if name.startswith(prefix):
            return prefix[:-1], name[len(prefix):]
    return 'module', name


def layout_tag(name, kind, st, tensors):
    """The `let tag = ...;` line of a LAYOUT op, or None when `st` is not one."""
    fl = 'true' if kind in ('float', 'q') else 'false'
    t = lambda n: tensors[n]
    if st == 'reshape':
        return f'layout::reshape(&tensor.shape(), &shape, {t("tensor")}, {fl}, "{name}")'
    if st == 'expand':
        return f'layout::expand(&tensor.shape(), &shape, {t("tensor")}, {fl}, "{name}")'
    if st == 'slice':
        return f'layout::slice(&tensor.shape(), slices, {t("tensor")}, "{name}")'
    if st == 'slice_assign':
        return (f'layout::slice_assign(&tensor.shape(), slices, {t("tensor")}, {t("value")}, '
                f'"{name}")')
    if st == 'swap_dims':
        return f'layout::swap_dims(dim1, dim2, {t("tensor")}, {fl}, "{name}")'
    if st == 'transpose':
        return f'layout::transpose(tensor.shape().num_dims(), {t("tensor")}, {fl}, "{name}")'
    if st == 'permute':
        return f'layout::permute(axes, {t("tensor")}, {fl}, "{name}")'
    if st == 'flip':
        return f'layout::flip(axes, {t("tensor")}, "{name}")'
    if st == 'gather':
        return f'layout::gather(dim, {t("tensor")}, {t("indices")}, "{name}")'
    if st.startswith('scatter') and st != 'scatter_nd':
        return f'layout::scatter(dim, {t("tensor")}, {t("indices")}, {t("value")}, "{name}")'
    if st == 'select':
        return f'layout::select(dim, {t("tensor")}, {t("indices")}, "{name}")'
    if st.startswith('select_'):
        return (f'layout::select_assign(dim, {t("tensor")}, {t("indices")}, {t("value")}, '
                f'"{name}")')
    if st == 'matmul':
        return (f'layout::matmul(&lhs.shape(), &rhs.shape(), {t("lhs")}, {t("rhs")}, {fl}, '
                f'"{name}")')
    return None


DIMENSION_ARGS = {'dim1', 'dim2', 'axes', 'shape', 'slices', 'indices'}


def wrap_ret(ty, expr, tag):
    kind = TENSOR_TYPES.get(ty)
    if kind == 'float':
        return f'PsTensor::dense({expr}, {tag})'
    if kind:
        return f'Tagged::new({expr}, {tag})'
    raise SystemExit(f'unhandled return type {ty}')


def gen_method(trait, s):
    name, args, ret = parse(s['sig'])
    sig_txt = selfify(s['sig'])
    if name in HAND_WRITTEN:
        call = ', '.join(n for n, _ in args)
        return f'    {sig_txt} {{\n        intercept::{name}::<B>({call})\n    }}\n'
    if trait in SKIP_TRAITS_DEFAULTS and s['default']:
        return None
    if 'TransactionPrimitive' in s['sig']:
        return None
    kind, st = stem(name)
    lines = []
    tensors = {}  # argument name -> its tag variable
    call_args = []
    hook = []  # the rule call's arguments, for hooked ops
    for n, t in args:
        v = 't_' + n.lstrip('_')
        inner = re.fullmatch(r'(Option|Vec)<(.*)>', t)
        base = inner.group(2) if inner else t.lstrip('&')
        if base not in TENSOR_TYPES:
            if re.search(r'(Float|Int|Bool|Quantized)Tensor|Primitive', t):
                raise SystemExit(f'unhandled argument type {t} in {name}')
            if n not in PLAIN_ARGS and n not in DIMENSION_ARGS:
                raise SystemExit(f'argument `{n}: {t}` of {name} has no tag rule')
            call_args.append(n)
            hook.append(f'("{n}", OpArg::Value(&{n}))')
            continue
        float = TENSOR_TYPES[base] == 'float'
        if t.startswith('&'):
            if float:
                raise SystemExit(f'{name} borrows a float tensor: write it by hand (HAND_WRITTEN)')
            call_args.append(f'&{n}.tensor')
            continue
        if name in HOOKED and (inner or t.startswith('&')):
            raise SystemExit(f'hooked op {name}: argument `{n}: {t}` cannot be offered to rules')
        hook.append(f'("{n}", OpArg::{"Float" if float else "Int"}(&{n}, {v}))')
        if inner:
            helper = {('Option', True): 'opt_dense', ('Vec', True): 'vec_dense',
                      ('Option', False): 'opt_split', ('Vec', False): 'vec_split'}[
                (inner.group(1), float)]
            extra = f', "{name}"' if float else ''
            lines.append(f'let ({n}, {v}) = {helper}({n}{extra});')
        elif float:
            lines.append(f'let ({n}, {v}) = {n}.into_dense("{name}");')
        else:
            lines.append(f'let ({n}, {v}) = {n}.split();')
        tensors[n] = v
        call_args.append(n)
    call = f'B::{name}({", ".join(call_args)})'
    names = {n for n, _ in args}
    if name in HOOKED:
        if ret != 'FloatTensor<B>':
            raise SystemExit(f'hooked op {name} returns {ret}, not a float tensor')
        lines.append(f'let call = OpCall::new("{name}", vec![{", ".join(hook)}]);')
        lines.append('if let Some(out) = rules::dispatch::<B>(&call) { return out; }')

    # data movement between host and device
    if st == 'from_data':
        lines += ['transfer::uploaded(&data);', 'let tag = Tag::host(&data.shape);']
        lines.append(wrap_ret(ret, call, 'tag'))
        return method(sig_txt, lines)
    if st == 'into_data':
        # reading batch data back to the host poisons an open DP pass (backend/pass.rs)
        lines += [f'pass::host_read({v}, "{name}");' for v in tensors.values()]
        lines.append(f'transfer::downloaded({call})')
        return method(sig_txt, lines)
    if not any(k in ret for k in TENSOR_TYPES):
        # metadata (device, dtype checks): nothing to tag
        if 'impl Future' in ret:
            raise SystemExit(f'unhandled future {ret} in {name}')
        lines.append(call)
        return method(sig_txt, lines)

    # the result's tag
    tag = layout_tag(name, kind, st, tensors)
    if tag is None:
        if tensors and names & DIMENSION_ARGS - {'indices'} or ('indices' in names and st not in ALWAYS_MIX
                                                    and kind != 'module'):
            raise SystemExit(f'{name} has dimension arguments but no tag rule')
        if trait == 'ModuleOps':
            parts = [f'{v}.shared("{name}")' if n in SHARED_ARGS else v
                     for n, v in tensors.items()]
        else:
            parts = list(tensors.values())
        tag = f'Tag::join_all(&[{", ".join(parts)}])' if parts else 'Tag::Independent'
        lines.append(f'let tag = {tag};')
        if 'dim' in names:
            lines.append(f'let tag = tag.along_dim(dim, "{name}");')
        elif st in FULL_REDUCE or st in ALWAYS_MIX or st.endswith('_weight_backward') \
                or st.endswith('_bias_backward'):
            # full reductions; ops mixing rows; parameter gradients summed over the batch
            lines.append(f'let tag = tag.mix("{name}");')
    else:
        lines.append(f'let tag = {tag};')

    fut = re.fullmatch(r'impl Future<Output = (.*)> \+ \'static \+ Send', ret)
    tup = re.fullmatch(r'\((.*), (.*)\)', ret)
    if fut:
        lines.append(f'let out = {call};')
        lines.append(f'async move {{ {wrap_ret(fut.group(1), "out.await", "tag")} }}')
    elif tup:
        lines.append(f'let (a, b) = {call};')
        lines.append(f'({wrap_ret(tup.group(1), "a", "tag")}, {wrap_ret(tup.group(2), "b", "tag")})')
    else:
        lines.append(wrap_ret(ret, call, 'tag'))
    return method(sig_txt, lines)


def method(sig_txt, lines):
    body = '\n        '.join(lines)
    return f'    {sig_txt} {{\n        {body}\n    }}\n'


# ---------------------------------------------------------------- cargo metadata

def burn_backend_ops_dir():
    """src/backend/ops of the burn-backend package the workspace resolves (cargo metadata)."""
    # Only the host platform's packages: cargo then needs nothing beyond what the build fetched.
    rustc = subprocess.run(['rustc', '-vV'], check=True, stdout=subprocess.PIPE).stdout.decode()
    host = re.search(r'^host: (\S+)$', rustc, re.M).group(1)
    out = subprocess.run(['cargo', 'metadata', '--format-version', '1', '--filter-platform', host],
                         cwd=ROOT, check=True, stdout=subprocess.PIPE).stdout
    meta = json.loads(out)
    for pkg in meta['packages']:
        if pkg['name'] == 'burn-backend' and pkg['version'] == BURN_BACKEND_VERSION:
            return os.path.join(os.path.dirname(pkg['manifest_path']), 'src', 'backend', 'ops')
    raise SystemExit(f'burn-backend {BURN_BACKEND_VERSION} is not in `cargo metadata`')


# ---------------------------------------------------------------- trait sources

def extract(src, trait):
    """The method signatures of `trait` in `src`: [{'sig', 'default', 'name'}] in source order."""
    src = re.sub(r'//[^\n]*', '', src)
    start = src.index(f'pub trait {trait}<B: Backend>')
    i = src.index('{', start) + 1
    depth = 1
    body_start = i
    while depth:
        c = src[i]
        if c == '{':
            depth += 1
        elif c == '}':
            depth -= 1
        i += 1
    body = src[body_start:i - 1]
    j = 0
    sigs = []
    while True:
        m = re.search(r'\bfn\s+(\w+)', body[j:])
        if not m:
            break
        s = j + m.start()
        # the signature ends at ';' or '{' outside parentheses
        k = s
        pd = 0
        while True:
            c = body[k]
            if c in '([':
                pd += 1
            elif c in ')]':
                pd -= 1
            if pd == 0 and c in ';{':
                break
            k += 1
        sig = ' '.join(body[s:k].split())
        has_default = body[k] == '{'
        if has_default:
            d = 1
            k += 1
            while d:
                if body[k] == '{':
                    d += 1
                elif body[k] == '}':
                    d -= 1
                k += 1
        else:
            k += 1
        sigs.append({'sig': sig, 'default': has_default, 'name': m.group(1)})
        j = k
    return sigs


def split_args(s):
    out, depth, cur = [], 0, ''
    for c in s:
        if c in '<([':
            depth += 1
        if c in '>)]':
            depth -= 1
        if c == ',' and depth == 0:
            out.append(cur.strip())
            cur = ''
        else:
            cur += c
    if cur.strip():
        out.append(cur.strip())
    return out


def parse(sig):
    m = re.match(r'fn (\w+)\s*\(', sig)
    name = m.group(1)
    i = m.end()
    depth = 1
    j = i
    while depth:
        if sig[j] == '(':
            depth += 1
        elif sig[j] == ')':
            depth -= 1
        j += 1
    args = sig[i:j - 1]
    rest = sig[j:].strip()
    ret = rest[2:].strip() if rest.startswith('->') else ''
    parsed = []
    for a in split_args(args):
        n, t = a.split(':', 1)
        parsed.append((n.strip(), t.strip()))
    return name, parsed, ret


def selfify(t):
    return re.sub(r'<B>', '<Self>', t).replace('crate::tensor::', 'burn_backend::tensor::')


# ---------------------------------------------------------------- code generation

HEADER = '// @generated by tools/gen_backend.py from burn-backend 0.21.0 -- do not edit by hand.'
IMPORTS = [
    '#![allow(unused_imports, unused_variables, clippy::too_many_arguments)]',
    'use crate::backend::primitive::{opt_dense, opt_split, vec_dense, vec_split, PsTensor, Tag, Tagged};',
    'use crate::backend::{intercept, layout, pass, transfer};',
    'use crate::rules::{self, OpArg, OpCall};',
    'use crate::backend::PerSample;',
    'use burn_backend::ops::*;',
    'use burn_backend::tensor::*;',
    'use burn_backend::quantization::QuantScheme;',
    'use burn_backend::{Backend, Distribution, ExecutionError, Scalar, TensorData};',
    'use burn_backend::{BoolDType, FloatDType, IntDType, Shape, Slice};',
    'use burn_backend::quantization::QuantizationParametersPrimitive;',
    'use core::future::Future;',
    'use core::ops::Range;',
    'use burn_backend::TensorMetadata;',
]


def generate():
    """{path relative to ROOT: unformatted text} for every generated file."""
    ops_dir = burn_backend_ops_dir()
    files = {}
    mods = []
    sources = {}
    for trait, src_file, _ in TRAITS:
        with open(os.path.join(ops_dir, src_file)) as f:
            sources[trait] = extract(f.read(), trait)
    every_op = {s['name'] for sigs in sources.values() for s in sigs}
    unknown = RULE_OPS - every_op
    if unknown:
        raise SystemExit(f'{RULE_TABLE} names ops burn-backend does not have: {sorted(unknown)}')
    hand_rules = RULE_OPS & HAND_WRITTEN - HAND_WRITTEN_HOOKS
    if hand_rules:
        raise SystemExit(f'rule ops written by hand without a rule hook: {sorted(hand_rules)}')
    HOOKED.clear()
    HOOKED.update(RULE_OPS)
    HOOKED.update(s['name'] for trait, sigs in sources.items() for s in sigs
                  if is_parameter_gradient_op(trait, s['name']))
    for trait, src_file, out_file in TRAITS:
        sigs = sources[trait]
        out = [HEADER,
               f'//! `{trait}` of [`PerSample`]: every op forwarded to the inner backend, with tag '
               'propagation.',
               *IMPORTS, '']
        out.append(f'impl<B: Backend> {trait}<Self> for PerSample<B> {{')
        for s in sigs:
            g = gen_method(trait, s)
            if g:
                out.append(g)
        out.append('}\n')
        files[os.path.join(OUT_DIR, out_file)] = '\n'.join(out)
        mods.append(out_file[:-3])
    mod = [HEADER,
           '//! Forwarding of every backend op of [`PerSample`](super::PerSample) to the inner '
           'backend, with',
           '//! tag propagation: one file per backend op trait, as in burn-autodiff\'s `ops/`.',
           *[f'mod {m};' for m in sorted(mods)], '',
           '/// The backend ops a per-sample rule may intercept: the rule table\'s ops and every '
           'parameter',
           '/// gradient op of `ModuleOps`.',
           'pub(crate) const HOOKED_OPS: &[&str] = &[',
           *[f'    "{op}",' for op in sorted(HOOKED)], '];', '']
    files[os.path.join(OUT_DIR, 'mod.rs')] = '\n'.join(mod)
    return files


def rustfmt(text):
    """`text` formatted as `cargo fmt` formats the repository (edition 2021, rustfmt.toml)."""
    return subprocess.run(
        ['rustfmt', '--edition', '2021', '--emit', 'stdout',
         '--config-path', os.path.join(ROOT, 'rustfmt.toml')],
        input=text.encode(), stdout=subprocess.PIPE, check=True, cwd=ROOT).stdout.decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--check', action='store_true',
                    help='exit 1 if the committed files differ from a fresh generation')
    args = ap.parse_args()
    files = {path: rustfmt(text) for path, text in generate().items()}
    on_disk = os.path.join(ROOT, OUT_DIR)
    stale = sorted(
        os.path.join(OUT_DIR, f) for f in (os.listdir(on_disk) if os.path.isdir(on_disk) else [])
        if f.endswith('.rs') and os.path.join(OUT_DIR, f) not in files)
    if args.check:
        bad = list(stale)
        for path, text in files.items():
            full = os.path.join(ROOT, path)
            old = open(full).read() if os.path.exists(full) else ''
            if old != text:
                bad.append(path)
                sys.stdout.writelines(difflib.unified_diff(
                    old.splitlines(True), text.splitlines(True), path, path + ' (generated)', n=1))
        if bad:
            print('generated backend files differ from a fresh generation: ' + ', '.join(bad)
                  + '\nrun `python3 tools/gen_backend.py` and commit the result', file=sys.stderr)
            sys.exit(1)
        print(f'ok: {len(files)} generated files are up to date')
        return
    os.makedirs(on_disk, exist_ok=True)
    for path in stale:
        os.remove(os.path.join(ROOT, path))
    for path, text in files.items():
        with open(os.path.join(ROOT, path), 'w') as f:
            f.write(text)
    print(f'wrote {len(files)} files under {OUT_DIR}')


if __name__ == '__main__':
    main()
