# Two "hosts" on one machine for multi-node tests, sourced by
# tests/cli/mpi_multinode.sh. Each host is a network namespace with its own
# address on a private bridge; Open MPI starts its daemons there through a
# launch agent (instead of ssh) that also gives each a host name of its own
# (a UTS namespace), so ranks on different "hosts" see different processor
# names and talk over TCP. Recipe: STACK.md "Several hosts on one machine".
#   netns_up DIR   create bridge + namespaces, write DIR/agent (the launch
#                  agent) and DIR/hostfile (2 slots per host)
#   netns_down     delete what netns_up created (safe to call twice, and
#                  after a partial netns_up)
#   NETNS_MPIRUN   mpirun options that use the agent and the bridge network
# Needs root (ip netns, unshare); installs iproute2 if it is missing.

NETNS_SUBNET=10.200.0
NETNS_TAG=f$$                  # unique per test run: never touches others' devices
NETNS_BRIDGE=${NETNS_TAG}br
NETNS_HOSTS=(ferry-a ferry-b)  # host names; addresses .1, .2; the bridge is .254
NETNS_MADE=()                  # "ns NAME" / "link NAME" in creation order

netns_up() {
  local dir=$1 i name ns veth
  # The subnet is fixed: one such test per machine at a time (several build
  # trees may run the suite at once). Released when this shell exits.
  exec 7>/tmp/ferry-netns-test.lock
  flock -w 300 7 || { echo "netns-hosts: another multi-node test holds the lock" >&2; return 1; }
  if ! command -v ip >/dev/null; then
    echo "netns-hosts: installing iproute2"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends iproute2 >/dev/null
  fi
  ip link add name "$NETNS_BRIDGE" type bridge
  NETNS_MADE+=("link $NETNS_BRIDGE")
  ip addr add "$NETNS_SUBNET.254/24" dev "$NETNS_BRIDGE"
  ip link set "$NETNS_BRIDGE" up
  : >"$dir/hostfile"
  {
    echo '#!/bin/sh'
    echo '# mpirun launch agent: "agent HOST COMMAND..." runs COMMAND on HOST (a namespace).'
    echo 'host=$1; shift'
    echo 'case $host in'
  } >"$dir/agent"
  for i in "${!NETNS_HOSTS[@]}"; do
    name=${NETNS_HOSTS[$i]}
    ns=$NETNS_TAG-$name
    veth=$NETNS_TAG$i
    ip netns add "$ns"
    NETNS_MADE+=("ns $ns")
    # One end in the namespace (eth0), the other on the bridge; deleting the
    # namespace deletes the pair.
    ip link add "$veth" type veth peer name eth0 netns "$ns"
    ip link set "$veth" master "$NETNS_BRIDGE" up
    ip -n "$ns" addr add "$NETNS_SUBNET.$((i + 1))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    echo "$NETNS_SUBNET.$((i + 1)) slots=2" >>"$dir/hostfile"
    echo "  $NETNS_SUBNET.$((i + 1))|$name) exec ip netns exec $ns unshare --uts sh -c \"hostname $name; \$*\" ;;" >>"$dir/agent"
  done
  {
    echo '  *) echo "agent: unknown host $host" >&2; exit 1 ;;'
    echo 'esac'
  } >>"$dir/agent"
  chmod +x "$dir/agent"
  NETNS_MPIRUN=(--mca plm_rsh_agent "$dir/agent" --hostfile "$dir/hostfile"
    --mca oob_tcp_if_include "$NETNS_SUBNET.0/24" --mca btl tcp,self
    --mca btl_tcp_if_include "$NETNS_SUBNET.0/24" --bind-to none)
}

netns_down() {
  local i kind name
  for ((i = ${#NETNS_MADE[@]} - 1; i >= 0; i--)); do
    read -r kind name <<<"${NETNS_MADE[$i]}"
    case $kind in
      ns) ip netns delete "$name" 2>/dev/null || true ;;
      link) ip link delete "$name" 2>/dev/null || true ;;
    esac
  done
  NETNS_MADE=()
}
