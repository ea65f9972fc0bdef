"""DreamFoley's networks. One shape legend for the whole package (a letter means one thing everywhere):

  B batch                T time / query positions      S key or KV-cache slots    L decoder layers
  D model width          F MLP hidden width            V vocab (per codebook)     K audio codebooks
  H query heads          Hkv kv heads                  G query heads per kv head  Dh head dim
  Lt text tokens         Tv video frames (25 Hz)       Tc CLIP frames (4 fps)     La delayed audio columns
  P prompt (Lt + Tv)     Ds, Dc, Dv sync / CLIP / fused video widths              O CLIP projection width
  Nw Synchformer windows Fw frames per window          Tw token frames per window Np patches per frame
  N tokens of a vision tower   R flattened rows (e.g. B * Nw)   Ng, M divided-attention groups, group length
Image tensors end in ...xHxWxC (pixel height, width, channels: the one place H is not heads).
Names carry the shape (x_BxTxD, k_BxHkvxSxDh); einsum strings use the lower-case letter (b t s d f v k h g r),
e = Dh, j = Hkv, l = N, m / n = query / key position inside a group.
"""
