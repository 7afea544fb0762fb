"""Extract backend trait method signatures from burn-backend 0.21 sources (dev tool for codegen)."""
import re, sys, glob, json
root = glob.glob('/root/.cargo/registry/src/*/burn-backend-0.21.0/src/backend/ops')[0]
files = {'FloatTensorOps':'tensor.rs','IntTensorOps':'int_tensor.rs','BoolTensorOps':'bool_tensor.rs',
         'ModuleOps':'modules/base.rs','ActivationOps':'activation.rs','QTensorOps':'qtensor.rs','TransactionOps':'transaction.rs'}
out = {}
for trait, f in files.items():
    src = open(f'{root}/{f}').read()
    src = re.sub(r'//[^\n]*', '', src)
    start = src.index(f'pub trait {trait}<B: Backend>')
    i = src.index('{', start) + 1
    depth = 1; body_start = i
    while depth:
        c = src[i]
        if c == '{': depth += 1
        elif c == '}': depth -= 1
        i += 1
    body = src[body_start:i-1]
    # walk top-level items
    j = 0; sigs = []
    while True:
        m = re.search(r'\bfn\s+(\w+)', body[j:])
        if not m: break
        s = j + m.start()
        # find end: ';' or '{' at paren depth 0 (generics may contain braces? no)
        k = s; pd = 0; ad = 0
        while True:
            c = body[k]
            if c in '([': pd += 1
            elif c in ')]': pd -= 1
            elif c == '<': ad += 1
            elif c == '>' and body[k-1] != '-': ad -= 1
            if pd == 0 and c in ';{': break
            k += 1
        sig = ' '.join(body[s:k].split())
        has_default = body[k] == '{'
        if has_default:
            d = 1; k += 1
            while d:
                if body[k] == '{': d += 1
                elif body[k] == '}': d -= 1
                k += 1
        else:
            k += 1
        sigs.append({'sig': sig, 'default': has_default, 'name': m.group(1)})
        j = k
    out[trait] = sigs
json.dump(out, open('/tmp/sigs.json','w'), indent=1)
for t, ss in out.items():
    print(t, len(ss), sum(1 for s in ss if not s['default']))
