"""Names the builtin plugins share: Dioptra's default artifacts and model (not a plugin itself).

The core names none of these: each builtin task passes them to the core's schema groups
(``DatasetSource(default_tar=..., default_name=...)``, ``ModelArchitecture(DEFAULT_MODEL)``).
"""

#: The model every builtin task builds unless told otherwise (the seed's default).
DEFAULT_MODEL = "le_net"
#: What ``gen_poison_test_data`` writes and ``infer`` reads by default (the seed's names).
ADV_TESTING_TAR, ADV_TESTING_NAME = "testing_adversarial.tar", "adv_testing"
