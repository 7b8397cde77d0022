"""The kernel side, in small types: the user-space partners of bpf/marker.bpf.c.

- :mod:`.ext`: the ``flowlabel._bpf`` extension (libbpf and the layout of bpf/marker.h),
  imported here only, and errno turned into :mod:`flowlabel.errors`.
- :mod:`.objfile`: a BPF object file opened and loaded, with errors that say why not.
- :mod:`.program`: :class:`~.program.Program`, one opened, configured and loaded copy
  of the classifier.
- :mod:`.writer`: :class:`~.writer.DirectWriter`, bpf/writer.bpf.c, which the classifier
  tail-calls for unicast UDP where the kernel can run it.
- :mod:`.flowmap`: :class:`~.flowmap.FlowMap`, the one writer of the flow map, its
  presence filter and its clock (cache generation and idle epoch).
- :mod:`.rulemaps`: :class:`~.rulemaps.RuleMaps`, the site rules' tables, written once,
  and the packets each rule decided.
- :mod:`.attach`: :class:`~.attach.Attachment`, a program on an interface's egress
  (TCX link or cls_bpf filter), and the per-interface lock.
- :mod:`.sockets`: :class:`~.sockets.SocketWatch`, bpf/sockets.bpf.c's user-space partner:
  TCP sockets that close (or are established).
- :mod:`.features`: what the running kernel offers, probed.

:class:`flowlabel.marker.Marker` composes them.
"""
