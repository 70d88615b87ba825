"""Stable machine codes for a value the analysis refuses to give (contract C3: metric ``codes``).

Each metric object's ``reasons`` holds the human text, ``codes`` the code below, under the same key.
The rules behind each code are in docs/acoustics.md ("Refusals").
"""

#: The band lies (partly) above the Nyquist frequency (8 kHz needs fs ≥ 22.5 kHz).
BAND_UNAVAILABLE = "band_unavailable"
#: Lundeby's iteration finds no decay above the noise floor (Lundeby et al. 1995).
NO_DECAY_ABOVE_NOISE = "no_decay_above_noise"
#: Peak-to-noise ratio below the ISO 3382-1 rule, the decay curve does not reach the evaluation range,
#: or the energy below the noise floor (the extrapolated tail) could move the value by a JND.
INSUFFICIENT_DYNAMIC_RANGE = "insufficient_dynamic_range"
#: Decay not straight enough for a line fit: non-linearity ξ above the ISO 3382-2 Annex B limit.
NONLINEAR_DECAY = "nonlinear_decay"
#: The band's filtered energy comes mostly from outside the band (too little source level in it).
BAND_LEVEL_TOO_LOW = "band_level_too_low"
#: Impulse response shorter than IEC 60268-16's 1.6 s and its decay not complete within it.
IR_TOO_SHORT = "ir_too_short"
#: STI: a modulation transfer value above 1.3 (IEC 60268-16: invalid measurement).
INVALID_MTF = "invalid_mtf"
#: A parameter that depends on another one which was refused (e.g. curvature needs T20 and T30).
DEPENDS_ON_REFUSED = "depends_on_refused"
#: Anything else that makes a value undefined (e.g. no energy after 80 ms: C80 = +∞).
NOT_COMPUTABLE = "not_computable"
#: Dynamic range: the IR holds no noise floor (noise-free, e.g. a simulation ending in zeros).
NO_NOISE_FLOOR = "no_noise_floor"
