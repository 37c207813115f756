# Cases for modules/lib/ssh.nix: a host nobody could log in to is refused; every host reads the
# shared operator keys.
let
  inherit (import ../../modules/lib) ssh;
  hosts = import ./hosts.nix;
  base = {
    opensshEnable = true;
    passwordAuthentication = false;
    kbdInteractiveAuthentication = false;
  };
  key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHKq0oGpF6N8b1e6pZ0Gk5xS2y0bq9mYfG3CwJ8zS1tD op@laptop";
  lockout = "cairn.appliance.sshKeys: empty, and no user has an authorized key, while password logins are off: nobody could log in over SSH after this switch. Put your public key (~/.ssh/id_ed25519.pub) into hosts/ssh-keys.nix (docs/first-deployment.md, step 1), or set services.openssh.enable = false to run without SSH on purpose.";
in
[
  {
    name = "ssh.lockoutProblems: no key anywhere, passwords off";
    expr = ssh.lockoutProblems (
      base
      // {
        users = {
          root.openssh.authorizedKeys = {
            keys = [ ];
            keyFiles = [ ];
          };
          cairn = { };
        };
      }
    );
    expected = [ lockout ];
  }
  {
    name = "ssh.lockoutProblems: a key for root";
    expr = ssh.lockoutProblems (base // { users.root.openssh.authorizedKeys.keys = [ key ]; });
    expected = [ ];
  }
  {
    name = "ssh.lockoutProblems: a key file for another user";
    expr = ssh.lockoutProblems (
      base
      // {
        users = {
          root = { };
          op.openssh.authorizedKeys.keyFiles = [ ./hosts.nix ];
        };
      }
    );
    expected = [ ];
  }
  {
    name = "ssh.lockoutProblems: SSH off, or a password login on, is not a lockout";
    expr = [
      (ssh.lockoutProblems (
        base
        // {
          opensshEnable = false;
          users = { };
        }
      ))
      (ssh.lockoutProblems (
        base
        // {
          passwordAuthentication = true;
          users = { };
        }
      ))
      (ssh.lockoutProblems (
        base
        // {
          kbdInteractiveAuthentication = true;
          users = { };
        }
      ))
    ];
    expected = [
      [ ]
      [ ]
      [ ]
    ];
  }
  {
    name = "ssh.lockoutProblems: null (no line, sshd's default yes) allows passwords";
    expr = ssh.lockoutProblems (
      base
      // {
        passwordAuthentication = null;
        users = { };
      }
    );
    expected = [ ];
  }
  {
    name = "ssh.lockoutProblems: every host in hosts/ takes its keys from hosts/ssh-keys.nix";
    # The names of the hosts that do not (a new class must read the shared list too).
    expr = map (h: h.name) (
      builtins.filter (
        h: !(h.module.cairn.appliance ? sshKeys) || h.module.cairn.appliance.sshKeys != import ../../hosts/ssh-keys.nix
      ) hosts
    );
    expected = [ ];
  }
  {
    name = "ssh.lockoutProblems: hosts/ssh-keys.nix is a list of one-line public keys";
    expr = builtins.filter (k: !(builtins.isString k) || builtins.match "(ssh|ecdsa|sk)-[^ \n]+ [A-Za-z0-9+/=]+( [^\n]*)?" k == null) (
      import ../../hosts/ssh-keys.nix
    );
    expected = [ ];
  }
]
