#!/usr/bin/env python3
"""Checks that core/'s layers call and include downward only.

Usage: check_layers.py CORE_DIR OBJECT_DIR LAYER...   (layers bottom first)

1. Includes: a file in core/L/ includes, of core's own headers, only L/L.h
   (a .c file) or the header of the layer directly below (L/L.h itself), and
   headers private to its own folder (core/L/*.h, which no other layer may
   include); public headers (metastep/...) and system headers are free.
2. Calls and data: every symbol an object file of layer L takes from another
   core object file is defined in layer L or a layer below (nm on the objects
   meson built, named <layer>_<file>.c.o).
Exit status 1 and one line per violation otherwise.
"""
import os
import re
import subprocess
import sys


def main():
    core, objdir, layers = sys.argv[1], sys.argv[2], sys.argv[3:]
    rank = {name: i for i, name in enumerate(layers)}
    bad = []
    inc = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
    for layer in layers:
        folder = os.path.join(core, layer)
        for f in sorted(os.listdir(folder)):
            if not f.endswith(('.c', '.h')):
                continue
            path = os.path.join(folder, f)
            own_header = f == layer + '.h'
            for target in inc.findall(open(path, encoding='utf-8').read()):
                if target.startswith('metastep/'):
                    continue
                top = target.split('/')[0]
                if top == layer and target != top + '/' + top + '.h' and \
                        os.path.exists(os.path.join(core, target)):
                    continue  # a header private to this layer
                if top not in rank or target != top + '/' + top + '.h':
                    bad.append(f'{layer}/{f}: includes "{target}", not a layer header')
                    continue
                want = rank[layer] - 1 if own_header else rank[layer]
                if rank[top] != want:
                    below = layers[want] if want >= 0 else '(nothing)'
                    bad.append(f'{layer}/{f}: includes "{target}"; it may include only '
                               f'"{below}/{below}.h" of core\'s headers')
    for f in os.listdir(core):
        if f.endswith(('.c', '.h')):
            bad.append(f'{f}: a file directly in core/ belongs to no layer')
    objs = [o for o in os.listdir(objdir) if o.endswith('.o')]
    defined, used = {}, {}
    for o in objs:
        layer = o.split('_')[0]
        if layer not in rank:
            bad.append(f'{o}: object of no known layer')
            continue
        out = subprocess.run(['nm', os.path.join(objdir, o)], capture_output=True,
                             text=True, check=True).stdout
        for line in out.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == 'U':
                used.setdefault(o, set()).add(parts[1])
            elif len(parts) == 3 and parts[1] in 'TDBRV' and parts[1].isupper():
                defined[parts[2]] = o
    if not objs:
        bad.append(f'no object files in {objdir}')
    for o, syms in sorted(used.items()):
        for s in sorted(syms):
            d = defined.get(s)
            if d and rank[d.split('_')[0]] > rank[o.split('_')[0]]:
                bad.append(f'{o} uses {s} from {d}, a higher layer')
    for b in bad:
        print('layering:', b)
    print(f'layering: {len(layers)} layers, {len(objs)} objects, {len(bad)} violations')
    return 1 if bad else 0


if __name__ == '__main__':
    sys.exit(main())
