# Whether anyone can still log in over SSH: the appliance turns password logins off, so a host
# whose users have no authorized key would lock its operator out at the first switch.
let
  inherit (builtins) attrNames filter;

  hasKey =
    user:
    let
      keys = (user.openssh or { }).authorizedKeys or { };
    in
    (keys.keys or [ ]) != [ ] || (keys.keyFiles or [ ]) != [ ];

  # nixpkgs types both settings `nullOr bool`; null writes no line, and sshd's own default is yes.
  allowed = v: v == null || v == true;

  # [ ] when someone can log in (or SSH is off, or passwords are on), else the message, which
  # names the option to set and where the shared keys live.
  lockoutProblems =
    {
      opensshEnable,
      passwordAuthentication,
      kbdInteractiveAuthentication,
      # users.users: { <name> = { openssh.authorizedKeys = { keys; keyFiles; }; }; }
      users,
    }:
    let
      withKeys = filter (n: hasKey users.${n}) (attrNames users);
    in
    if
      !opensshEnable
      || allowed passwordAuthentication
      || allowed kbdInteractiveAuthentication
      || withKeys != [ ]
    then
      [ ]
    else
      [
        "cairn.appliance.sshKeys: empty, and no user has an authorized key, while password logins are off: nobody could log in over SSH after this switch. Put your public key (~/.ssh/id_ed25519.pub) into hosts/ssh-keys.nix (docs/first-deployment.md, step 1), or set services.openssh.enable = false to run without SSH on purpose."
      ];
in
{
  inherit lockoutProblems;
}
