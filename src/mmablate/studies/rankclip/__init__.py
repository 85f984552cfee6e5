"""RankCLIP: CLIP pretraining with list-wise ranking-consistency losses (plan 003)."""
