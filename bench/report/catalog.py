"""What the report knows about the built-in methods without importing them: each attack's family
(what kind of threat it is, so defenses are compared within a kind) and where each attack and
defense was published and whether official code exists (shown as plain links; nothing is
fetched).

Sources: the method specs (``attacks.md`` and ``defenses.md`` in the project's shared specs) and
the papers' own pages. A plugin's attack gets its family from its rows (``attack_mode``); a
plugin has no entry here, so the page names its package instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from bench.schema import BUILTIN_PACKAGE

#: Attack families, in the order the report shows them.
STATIC_POISON_LABEL = "static poison-label"
CLEAN_LABEL = "clean-label"
TRAINING_CONTROLLED = "training-controlled"
OTHER = "other"
FAMILIES = (STATIC_POISON_LABEL, CLEAN_LABEL, TRAINING_CONTROLLED, OTHER)
#: One line per family: what the attacker controls.
FAMILY_MEANING = {
    STATIC_POISON_LABEL: "the attacker stamps a trigger on some training images and relabels them "
    "to the target class",
    CLEAN_LABEL: "the attacker stamps target-class images only and keeps every label correct",
    TRAINING_CONTROLLED: "the attacker also controls training (triggers drawn per batch, "
    "noise or cross samples keeping their labels)",
    OTHER: "a plugin attack whose kind the results do not record",
}
#: ``attack_mode`` of a training-controlled attack (the rows' own record of it).
TRAINING_CONTROLLED_MODE = "training-controlled"


@dataclass(frozen=True)
class Method:
    """A published attack or defense."""

    title: str
    cite: str  # "Gu et al., 2017"
    paper: str  # URL of the paper (arXiv or the venue)
    code: str = ""  # URL of the official code; "" when the authors published none
    note: str = ""  # e.g. what our implementation is, when no official code exists


ATTACKS: dict[str, Method] = {
    "badnets": Method(
        "BadNets: Identifying Vulnerabilities in the Machine Learning Model Supply Chain",
        "Gu et al., 2017",
        "https://arxiv.org/abs/1708.06733",
    ),
    "blended": Method(
        "Targeted Backdoor Attacks on Deep Learning Systems Using Data Poisoning",
        "Chen et al., 2017",
        "https://arxiv.org/abs/1712.05526",
    ),
    "trojannn": Method(
        "Trojaning Attack on Neural Networks",
        "Liu et al., NDSS 2018",
        "https://www.ndss-symposium.org/wp-content/uploads/2018/02/ndss2018_03A-5_Liu_paper.pdf",
        "https://github.com/PurduePAML/TrojanNN",
    ),
    "sig": Method(
        "A New Backdoor Attack in CNNs by Training Set Corruption Without Label Poisoning",
        "Barni et al., ICIP 2019",
        "https://arxiv.org/abs/1902.11237",
    ),
    "lc": Method(
        "Label-Consistent Backdoor Attacks",
        "Turner et al., 2019",
        "https://arxiv.org/abs/1912.02771",
        "https://github.com/MadryLab/label-consistent-backdoor-code",
    ),
    "wanet": Method(
        "WaNet: Imperceptible Warping-based Backdoor Attack",
        "Nguyen & Tran, ICLR 2021",
        "https://arxiv.org/abs/2102.10369",
        "https://github.com/VinAIResearch/Warping-based_Backdoor_Attack-release",
    ),
    "iad": Method(
        "Input-Aware Dynamic Backdoor Attack",
        "Nguyen & Tran, NeurIPS 2020",
        "https://arxiv.org/abs/2010.08138",
        "https://github.com/VinAIResearch/input-aware-backdoor-attack-release",
    ),
    "bpp": Method(
        "BppAttack: Stealthy and Efficient Trojan Attacks against Deep Neural Networks via Image "
        "Quantization and Contrastive Adversarial Learning",
        "Wang et al., CVPR 2022",
        "https://arxiv.org/abs/2205.13383",
        "https://github.com/RU-System-Software-and-Security/BppAttack",
    ),
    "ssba": Method(
        "Invisible Backdoor Attack with Sample-Specific Triggers",
        "Li et al., ICCV 2021",
        "https://arxiv.org/abs/2012.03816",
        "https://github.com/yuezunli/ISSBA",
    ),
    "lf": Method(
        "Rethinking the Backdoor Attacks' Triggers: A Frequency Perspective",
        "Zeng et al., ICCV 2021",
        "https://arxiv.org/abs/2104.03413",
        "https://github.com/YiZeng623/frequency-backdoor",
    ),
}

DEFENSES: dict[str, Method] = {
    "abl": Method(
        "Anti-Backdoor Learning: Training Clean Models on Poisoned Data",
        "Li et al., NeurIPS 2021",
        "https://arxiv.org/abs/2110.11571",
        "https://github.com/bboylyg/ABL",
    ),
    "dlp": Method(
        "DLP: towards active defense against backdoor attacks with decoupled learning process",
        "Ying & Wu, Cybersecurity 2023",
        "https://cybersecurity.springeropen.com/articles/10.1186/s42400-023-00141-4",
        note="no official code; this harness's reconstruction from the paper",
    ),
    "nab": Method(
        "Beating Backdoor Attack at Its Own Game",
        "Liu et al., ICCV 2023",
        "https://arxiv.org/abs/2307.15539",
        "https://github.com/damianliumin/non-adversarial_backdoor",
    ),
    "ibau": Method(
        "Adversarial Unlearning of Backdoors via Implicit Hypergradient",
        "Zeng et al., ICLR 2022",
        "https://arxiv.org/abs/2110.03735",
        "https://github.com/YiZeng623/I-BAU",
    ),
    "dbd": Method(
        "Backdoor Defense via Decoupling the Training Process",
        "Huang et al., ICLR 2022",
        "https://arxiv.org/abs/2202.03423",
        "https://github.com/SCLBD/DBD",
    ),
    # The baselines, as BackdoorBench implements them (its code is their reference).
    "ft": Method(
        "Fine-tuning on clean data (baseline)",
        "BackdoorBench, NeurIPS 2022 Datasets and Benchmarks",
        "https://arxiv.org/abs/2206.12654",
        "https://github.com/SCLBD/BackdoorBench",
    ),
    "fp": Method(
        "Fine-Pruning: Defending Against Backdooring Attacks on Deep Neural Networks",
        "Liu et al., RAID 2018",
        "https://arxiv.org/abs/1805.12185",
        "https://github.com/SCLBD/BackdoorBench",
    ),
    "nad": Method(
        "Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural Networks",
        "Li et al., ICLR 2021",
        "https://arxiv.org/abs/2101.05930",
        "https://github.com/bboylyg/NAD",
    ),
    "nc": Method(
        "Neural Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks",
        "Wang et al., IEEE S&P 2019",
        "https://doi.org/10.1109/SP.2019.00031",
        "https://github.com/bolunwang/backdoor",
    ),
    "anp": Method(
        "Adversarial Neuron Pruning Purifies Backdoored Deep Models",
        "Wu & Wang, NeurIPS 2021",
        "https://arxiv.org/abs/2110.14430",
        "https://github.com/csdongxian/ANP_backdoor",
    ),
    "clp": Method(
        "Data-free Backdoor Removal based on Channel Lipschitzness",
        "Zheng et al., ECCV 2022",
        "https://arxiv.org/abs/2208.03111",
        "https://github.com/rkteddy/channel-Lipschitzness-based-pruning",
    ),
}

#: Family of each built-in attack (spec ``attacks.md`` §1).
BUILTIN_FAMILY = {
    **dict.fromkeys(("badnets", "blended", "trojannn", "ssba", "lf"), STATIC_POISON_LABEL),
    **dict.fromkeys(("sig", "lc"), CLEAN_LABEL),
    **dict.fromkeys(("wanet", "iad", "bpp"), TRAINING_CONTROLLED),
}


def family(attack: str, attack_mode: str = "", package: str = "") -> str:
    """The family of an attack: the built-ins' from the spec; a plugin's from its rows'
    ``attack_mode`` (training-controlled, or else a kind the rows do not record)."""
    if package in ("", BUILTIN_PACKAGE) and attack in BUILTIN_FAMILY:
        return BUILTIN_FAMILY[attack]
    if attack_mode == TRAINING_CONTROLLED_MODE:
        return TRAINING_CONTROLLED
    return OTHER
