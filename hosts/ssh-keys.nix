# The operators' public SSH keys, for root on every host (cairn.appliance.sshKeys): one line each,
# e.g. the contents of ~/.ssh/id_ed25519.pub on the machine you deploy from. Password logins are
# off on every host, so while this list is empty no host builds (an assertion says so): the
# first switch would lock you out. Public keys are not secrets; they go into netboot images.
[
  # "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA... you@laptop"
]
