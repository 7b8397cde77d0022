"""The kernel side, in small types: the user-space partners of bpf/marker.bpf.c.

- :mod:`.ext`: the ``flowlabel._bpf`` extension (libbpf and the layout of bpf/marker.h),
  imported here only, and errno turned into :mod:`flowlabel.errors`.
- :mod:`.program`: :class:`~.program.Program`, one opened, configured and loaded copy
  of the classifier.
- :mod:`.flowmap`: :class:`~.flowmap.FlowMap`, the one writer of the flow map, its
  presence filter and its clock (cache generation and idle epoch).
- :mod:`.attach`: :class:`~.attach.Attachment`, a program on an interface's egress
  (TCX link or cls_bpf filter), and the per-interface lock.
- :mod:`.features`: what the running kernel offers, probed.

:class:`flowlabel.marker.Marker` composes them.
"""
