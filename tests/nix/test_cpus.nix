# Cases for modules/lib/cpus.nix: parse, render and isolation, refusals included.
let
  inherit (import ../../modules/lib) cpus;
in
[
  # parse
  {
    name = "cpus.parse: ranges and singles come back sorted";
    expr = cpus.parse "12-15,2-5,7";
    expected = [ 2 3 4 5 7 12 13 14 15 ];
  }
  {
    name = "cpus.parse: a single core";
    expr = cpus.parse "3";
    expected = [ 3 ];
  }
  {
    name = "cpus.parse: the empty string is no cores";
    expr = cpus.parse "";
    expected = [ ];
  }
  {
    name = "cpus.parse: a one-core range";
    expr = cpus.parse "4-4";
    expected = [ 4 ];
  }
  {
    name = "cpus.parse: a list of ints is sorted";
    expr = cpus.parse [ 5 0 3 ];
    expected = [ 0 3 5 ];
  }
  {
    name = "cpus.parse: the empty list";
    expr = cpus.parse [ ];
    expected = [ ];
  }
  {
    name = "cpus.parse: refuses overlapping ranges";
    expr = cpus.parse "2-5,4-6";
    throws = "cairn.cpus.parse: '2-5,4-6' lists cores 4-5 more than once; entries must not overlap";
  }
  {
    name = "cpus.parse: refuses a core inside an earlier range";
    expr = cpus.parse "1-3,2";
    throws = "cairn.cpus.parse: '1-3,2' lists core 2 more than once";
  }
  {
    name = "cpus.parse: refuses a repeated core";
    expr = cpus.parse "1,3,1";
    throws = "cairn.cpus.parse: '1,3,1' lists core 1 more than once";
  }
  {
    name = "cpus.parse: refuses duplicates in a list";
    expr = cpus.parse [ 2 2 2 ];
    throws = "cairn.cpus.parse: [ 2 2 2 ] lists core 2 more than once";
  }
  {
    name = "cpus.parse: refuses a descending range";
    expr = cpus.parse "1,5-2";
    throws = "cairn.cpus.parse: range '5-2' in '1,5-2' is descending; write it low-high";
  }
  {
    name = "cpus.parse: refuses a negative core";
    expr = cpus.parse "-1";
    throws = "cairn.cpus.parse: negative core '-1' in '-1'; cores are numbered from 0";
  }
  {
    name = "cpus.parse: refuses a negative core in a list";
    expr = cpus.parse [ 0 (-3) ];
    throws = "cairn.cpus.parse: negative core -3 in [ 0 -3 ]";
  }
  {
    name = "cpus.parse: refuses garbage";
    expr = cpus.parse "2-5,x";
    throws = "cairn.cpus.parse: 'x' in '2-5,x' is not a core number or a low-high range";
  }
  {
    name = "cpus.parse: refuses spaces (the kernel syntax has none)";
    expr = cpus.parse "2, 3";
    throws = "cairn.cpus.parse: ' 3' in '2, 3' is not a core number";
  }
  {
    name = "cpus.parse: refuses a stray comma";
    expr = cpus.parse "1,";
    throws = "cairn.cpus.parse: empty entry in '1,' (a stray comma?)";
  }
  {
    name = "cpus.parse: refuses a leading zero";
    expr = cpus.parse "01";
    throws = "cairn.cpus.parse: '01' in '01' is not a core number";
  }
  {
    name = "cpus.parse: refuses the kernel's stride form";
    expr = cpus.parse "0-7:2/4";
    throws = "cairn.cpus.parse: '0-7:2/4' in '0-7:2/4' is not a core number";
  }
  {
    name = "cpus.parse: refuses a string in a list";
    expr = cpus.parse [ 1 "2" ];
    throws = "cairn.cpus.parse: '2' in [ 1 '2' ] is not a core number (expected integers)";
  }
  {
    name = "cpus.parse: refuses an int where a list or string belongs";
    expr = cpus.parse 3;
    throws = "cairn.cpus.parse: expected a cpu-list string like \"2-5,12-15\" or a list of integers, got 3";
  }

  # render
  {
    name = "cpus.render: compresses runs";
    expr = cpus.render [ 2 3 4 5 12 13 14 15 ];
    expected = "2-5,12-15";
  }
  {
    name = "cpus.render: sorts, keeps singles and two-core runs";
    expr = cpus.render [ 7 1 0 3 9 10 ];
    expected = "0-1,3,7,9-10";
  }
  {
    name = "cpus.render: one core";
    expr = cpus.render [ 3 ];
    expected = "3";
  }
  {
    name = "cpus.render: no cores is the empty string";
    expr = cpus.render [ ];
    expected = "";
  }
  {
    name = "cpus.render: inverts parse";
    expr = cpus.render (cpus.parse "0,2-5,9-10,12");
    expected = "0,2-5,9-10,12";
  }
  {
    name = "cpus.render: refuses duplicates";
    expr = cpus.render [ 1 1 ];
    throws = "cairn.cpus.render: [ 1 1 ] lists core 1 more than once";
  }

  # isolation
  {
    name = "cpus.isolation: the workstation (20 cores, 2-5,12-15 isolated)";
    expr = cpus.isolation {
      cpuCount = 20;
      isolated = "2-5,12-15";
    };
    expected = {
      isolated = [ 2 3 4 5 12 13 14 15 ];
      housekeeping = [ 0 1 6 7 8 9 10 11 16 17 18 19 ];
      kernelParams = [
        "isolcpus=domain,managed_irq,2-5,12-15"
        "nohz_full=2-5,12-15"
        "rcu_nocbs=2-5,12-15"
        "irqaffinity=0-1,6-11,16-19"
      ];
      cpuAffinity = [ 0 1 6 7 8 9 10 11 16 17 18 19 ];
    };
  }
  {
    name = "cpus.isolation: a legacy node (2 cores, core 1 isolated)";
    expr = cpus.isolation {
      cpuCount = 2;
      isolated = "1";
    };
    expected = {
      isolated = [ 1 ];
      housekeeping = [ 0 ];
      kernelParams = [
        "isolcpus=domain,managed_irq,1"
        "nohz_full=1"
        "rcu_nocbs=1"
        "irqaffinity=0"
      ];
      cpuAffinity = [ 0 ];
    };
  }
  {
    name = "cpus.isolation: explicit housekeeping may leave cores in neither set";
    expr = cpus.isolation {
      cpuCount = 8;
      isolated = [ 5 4 ];
      housekeeping = "0-1";
    };
    expected = {
      isolated = [ 4 5 ];
      housekeeping = [ 0 1 ];
      kernelParams = [
        "isolcpus=domain,managed_irq,4-5"
        "nohz_full=4-5"
        "rcu_nocbs=4-5"
        "irqaffinity=0-1"
      ];
      cpuAffinity = [ 0 1 ];
    };
  }
  {
    name = "cpus.isolation: nothing isolated adds no kernel parameters";
    expr = cpus.isolation {
      cpuCount = 4;
      isolated = "";
    };
    expected = {
      isolated = [ ];
      housekeeping = [ 0 1 2 3 ];
      kernelParams = [ ];
      cpuAffinity = [ 0 1 2 3 ];
    };
  }
  {
    name = "cpus.isolation: refuses isolated and housekeeping sets that overlap";
    expr = cpus.isolation {
      cpuCount = 8;
      isolated = "2-5";
      housekeeping = "0-2";
    };
    throws = "cairn.tuning.housekeepingCores: core 2 is also in cairn.tuning.isolatedCores; the two sets must be disjoint";
  }
  {
    name = "cpus.isolation: refuses an empty housekeeping set";
    expr = cpus.isolation {
      cpuCount = 4;
      isolated = "1-3";
      housekeeping = [ ];
    };
    throws = "cairn.tuning.housekeepingCores: no housekeeping core left (cpuCount 4, isolated 1-3); keep at least one core out of cairn.tuning.isolatedCores";
  }
  {
    name = "cpus.isolation: refuses isolating every core";
    expr = cpus.isolation {
      cpuCount = 2;
      isolated = "0-1";
    };
    throws = "cairn.tuning.housekeepingCores: no housekeeping core left (cpuCount 2, isolated 0-1)";
  }
  {
    name = "cpus.isolation: refuses isolated cores that do not exist";
    expr = cpus.isolation {
      cpuCount = 4;
      isolated = "2-5";
    };
    throws = "cairn.tuning.isolatedCores: cores 4-5 do not exist: cairn.tuning.cpuCount is 4 (cores 0-3)";
  }
  {
    name = "cpus.isolation: refuses housekeeping cores that do not exist";
    expr = cpus.isolation {
      cpuCount = 4;
      isolated = "1";
      housekeeping = "0,4";
    };
    throws = "cairn.tuning.housekeepingCores: core 4 does not exist: cairn.tuning.cpuCount is 4 (cores 0-3)";
  }
  {
    name = "cpus.isolation: refuses isolating the boot CPU";
    expr = cpus.isolation {
      cpuCount = 4;
      isolated = "0-1";
    };
    throws = "cairn.tuning.isolatedCores: core 0 is the boot CPU";
  }
  {
    name = "cpus.isolation: refuses a cpuCount below 1";
    expr = cpus.isolation {
      cpuCount = 0;
      isolated = "";
    };
    throws = "cairn.tuning.cpuCount: expected a positive integer, got 0";
  }
  {
    name = "cpus.isolation: parse errors name the isolated option";
    expr = cpus.isolation {
      cpuCount = 8;
      isolated = "2-5,4-6";
    };
    throws = "cairn.tuning.isolatedCores: '2-5,4-6' lists cores 4-5 more than once";
  }
  {
    name = "cpus.isolation: parse errors name the housekeeping option";
    expr = cpus.isolation {
      cpuCount = 8;
      isolated = "4";
      housekeeping = "3-1";
    };
    throws = "cairn.tuning.housekeepingCores: range '3-1' in '3-1' is descending";
  }
  {
    name = "cpus.isolation: reading any one field still checks everything";
    expr =
      (cpus.isolation {
        cpuCount = 4;
        isolated = "1-3";
        housekeeping = "0-1";
      }).cpuAffinity;
    throws = "cairn.tuning.housekeepingCores: core 1 is also in cairn.tuning.isolatedCores";
  }
]
