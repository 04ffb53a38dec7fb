"""Pure tensor loss functions (no state, no parameters), each with its formula and paper."""
from .response import dist_loss, dist_terms, dkd_loss, dkd_terms, kd_ce_terms, kd_loss, logit_mse, logit_standardize
from .feature import (at_loss, attention_map, attention_map_loss, fitnet_loss, hidden_state_loss, match_spatial,
                      nst_loss, ofd_loss, ofd_margin_from_bn, ofd_margin_from_samples, sp_loss, vid_loss)
from .relation import cc_loss, crd_nce_loss, pairwise_distances, pkt_loss, rkd_loss, rkd_terms
from .token import (TOKEN_DIVERGENCES, default_chunk_size, fused_chunk_size, token_cross_entropy, token_cross_entropy_fused,
                    token_divergence, token_divergence_fused, token_divergence_topk)

from .response import (SKD_MODES, ctkd_kd_loss, ctkd_lambda, dist_plus_feature_terms, dist_plus_loss,
                       gradient_reversal, skd_direction_loss, skd_instance_loss)
from .feature import srd_loss
from .svd import feature_singular_vectors, kdsvd_loss

from . import feature, relation, response, svd, token

# Each module lists its own public functions; the package exports exactly those.
__all__ = [*response.__all__, *feature.__all__, *relation.__all__, *token.__all__, *svd.__all__]

# ReviewKD, FT, AB (hints through adapters) and FSP, ICKD (channel correlations).
from .hint import ab_loss, ft_loss, hcl_loss
from .correlation import channel_correlation, fsp_loss, fsp_matrix, ickd_loss

from . import correlation, hint

__all__ += [*hint.__all__, *correlation.__all__]

# Teachers with another tokenizer than the student's.
from .xtok import (next_token_logprobs, shared_vocab_kl, span_alignment_loss, span_logprob_loss, span_logprobs,
                   uld_loss)

from . import xtok

__all__ += [*xtok.__all__]
