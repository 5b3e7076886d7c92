#!/usr/bin/env bash
# deploy/kafka.sh: runs one real Apache Kafka 4.x broker (KRaft, combined broker+controller) on
# 127.0.0.1 from the jars on Maven Central, for development, end-to-end tests and benchmarks.
#
# Guarantees: `start` returns 0 only once the broker answers an admin request on its client
# port; `stop` returns only once the broker process is gone; `fetch` calls Maven only while the
# jar cache is missing or incomplete, and never writes into the repository.
set -euo pipefail

usage() {
  cat <<EOF
usage: deploy/kafka.sh COMMAND [ARGS...]

Runs one Apache Kafka broker on 127.0.0.1 in KRaft mode (broker and controller in one process,
node id 1), from the jars on Maven Central. Progress goes to stderr, tool output to stdout.

commands:
  fetch                     resolve Kafka, its tools and the log4j2 slf4j binding with Maven
                            into the cache; a complete cache is reused without Maven
  start                     fetch if needed, format storage once, start the broker in the
                            background, wait until it answers; exit 0 if already running
  stop                      SIGTERM, wait for a clean exit, SIGKILL after KAFKA_STOP_TIMEOUT_S;
                            exit 0 if not running
  status                    exit 0 if the broker runs and answers, 1 otherwise
  create-topic NAME PARTS   create topic NAME with PARTS partitions and replication factor 1
                            if missing; fail if it exists with another partition count
  tool CLASS [ARGS...]      run a Java main class from the cached jars against any broker,
                            e.g. org.apache.kafka.tools.GetOffsetShell
  producer-perf [ARGS...]   tool org.apache.kafka.tools.ProducerPerformance [ARGS...]
  consumer-perf [ARGS...]   tool org.apache.kafka.tools.ConsumerPerformance [ARGS...]
  help                      print this text

environment:
  KAFKA_VERSION             Kafka release to fetch and run (default $DEFAULT_KAFKA_VERSION)
  KAFKA_LOG4J_VERSION       version of log4j-api, log4j-core and the slf4j binding; keep it at
                            the one the Kafka release depends on (default $DEFAULT_LOG4J_VERSION,
                            Kafka $DEFAULT_KAFKA_VERSION's)
  KAFKA_SLF4J_BINDING       log4j-slf4j-impl for slf4j 1.x (Kafka 4.x ships slf4j-api 1.7.36)
                            or log4j-slf4j2-impl for slf4j 2.x (default log4j-slf4j-impl);
                            fetch fails if it does not match the resolved slf4j-api
  KAFKA_CACHE_DIR           jar cache root, outside the repository (default
                            \$HOME/.cache/stream-pipeline/kafka); jars go to
                            \$KAFKA_CACHE_DIR/\$KAFKA_VERSION/libs
  KAFKA_PORT                client (PLAINTEXT) port (default 9092)
  KAFKA_CONTROLLER_PORT     KRaft controller port (default KAFKA_PORT+1)
  KAFKA_DATA_DIR            holds server.properties, the partition logs, kafka.log and
                            kafka.pid (default /tmp/stream-pipeline-kafka-\$KAFKA_PORT); it is
                            tied to the ports it was formatted with
  KAFKA_FRESH               1: stop the broker and wipe KAFKA_DATA_DIR before start (default 0)
  KAFKA_HEAP                broker max heap, at least the 256m initial heap (default 512m)
  KAFKA_TOOL_HEAP           max heap of tools and perf tools (default 512m)
  KAFKA_START_TIMEOUT_S     seconds start waits for the broker to answer (default 60)
  KAFKA_STOP_TIMEOUT_S      seconds stop waits for a clean exit before SIGKILL (default 30)
  JAVA_HOME                 Java 17 or newer to run Kafka with (default: java on PATH)
  MVN                       Maven executable used by fetch (default mvn)

examples:
  KAFKA_PORT=19092 deploy/kafka.sh start
  KAFKA_PORT=19092 deploy/kafka.sh create-topic events 4
  deploy/kafka.sh producer-perf --bootstrap-server 127.0.0.1:19092 --topic events \\
      --num-records 100000 --record-size 100 --throughput -1
  deploy/kafka.sh consumer-perf --bootstrap-server 127.0.0.1:19092 --topic events \\
      --num-records 100000 --timeout 30000
  KAFKA_PORT=19092 deploy/kafka.sh stop
EOF
}

readonly DEFAULT_KAFKA_VERSION=4.4.0
# log4j-core version that org.apache.kafka:kafka-server:4.4.0 depends on.
readonly DEFAULT_LOG4J_VERSION=2.25.5
readonly MAVEN_DEPENDENCY_PLUGIN_VERSION=3.8.1
readonly SERVER_CLASS=kafka.Kafka
readonly STORAGE_TOOL_CLASS=kafka.tools.StorageTool
readonly TOPIC_TOOL_CLASS=org.apache.kafka.tools.TopicCommand
# Marker kafka.sh leaves in a data dir it owns; only such a dir is ever wiped.
readonly DATA_DIR_MARKER=.stream-pipeline-kafka

main() {
  local command=${1:-}
  if [[ -z $command ]]; then
    usage >&2
    exit 2
  fi
  shift
  case $command in
    help | -h | --help)
      usage
      return
      ;;
    *) ;;
  esac
  load_settings
  case $command in
    fetch) expect_args 0 "$@" && fetch_jars ;;
    start) expect_args 0 "$@" && lock_data_dir && start_broker ;;
    stop) expect_args 0 "$@" && lock_data_dir && stop_broker ;;
    status) expect_args 0 "$@" && broker_status ;;
    create-topic) expect_args 2 "$@" && create_topic "$@" ;;
    tool)
      [[ $# -ge 1 ]] || die "tool needs a Java main class, e.g. org.apache.kafka.tools.GetOffsetShell"
      run_tool "$@"
      ;;
    producer-perf) run_tool org.apache.kafka.tools.ProducerPerformance "$@" ;;
    consumer-perf) run_tool org.apache.kafka.tools.ConsumerPerformance "$@" ;;
    *)
      usage >&2
      die "unknown command '$command'"
      ;;
  esac
}

# Reads and checks the environment once; every command uses these globals.
load_settings() {
  KAFKA_VERSION=${KAFKA_VERSION:-$DEFAULT_KAFKA_VERSION}
  KAFKA_LOG4J_VERSION=${KAFKA_LOG4J_VERSION:-$DEFAULT_LOG4J_VERSION}
  KAFKA_SLF4J_BINDING=${KAFKA_SLF4J_BINDING:-log4j-slf4j-impl}
  KAFKA_PORT=${KAFKA_PORT:-9092}
  check_port KAFKA_PORT "$KAFKA_PORT"
  KAFKA_CONTROLLER_PORT=${KAFKA_CONTROLLER_PORT:-$((KAFKA_PORT + 1))}
  check_port KAFKA_CONTROLLER_PORT "$KAFKA_CONTROLLER_PORT"
  [[ $KAFKA_PORT != "$KAFKA_CONTROLLER_PORT" ]] ||
    die "KAFKA_PORT and KAFKA_CONTROLLER_PORT are both $KAFKA_PORT; give them different values"
  KAFKA_HEAP=${KAFKA_HEAP:-512m}
  check_heap KAFKA_HEAP "$KAFKA_HEAP"
  (($(heap_mib "$KAFKA_HEAP") >= 256)) ||
    die "KAFKA_HEAP must be at least 256m (the broker's initial heap), got '$KAFKA_HEAP'"
  KAFKA_TOOL_HEAP=${KAFKA_TOOL_HEAP:-512m}
  check_heap KAFKA_TOOL_HEAP "$KAFKA_TOOL_HEAP"
  KAFKA_START_TIMEOUT_S=${KAFKA_START_TIMEOUT_S:-60}
  check_seconds KAFKA_START_TIMEOUT_S "$KAFKA_START_TIMEOUT_S"
  KAFKA_STOP_TIMEOUT_S=${KAFKA_STOP_TIMEOUT_S:-30}
  check_seconds KAFKA_STOP_TIMEOUT_S "$KAFKA_STOP_TIMEOUT_S"
  KAFKA_FRESH=${KAFKA_FRESH:-0}
  [[ $KAFKA_FRESH == 0 || $KAFKA_FRESH == 1 ]] || die "KAFKA_FRESH must be 0 or 1, got '$KAFKA_FRESH'"
  case $KAFKA_SLF4J_BINDING in
    log4j-slf4j-impl | log4j-slf4j2-impl) ;;
    *) die "KAFKA_SLF4J_BINDING must be log4j-slf4j-impl or log4j-slf4j2-impl, got '$KAFKA_SLF4J_BINDING'" ;;
  esac
  [[ $KAFKA_VERSION =~ ^[0-9A-Za-z.+-]+$ ]] || die "KAFKA_VERSION '$KAFKA_VERSION' is not a version"
  [[ $KAFKA_LOG4J_VERSION =~ ^[0-9A-Za-z.+-]+$ ]] ||
    die "KAFKA_LOG4J_VERSION '$KAFKA_LOG4J_VERSION' is not a version"

  local cache_root=${KAFKA_CACHE_DIR:-${HOME:?HOME is unset; set KAFKA_CACHE_DIR}/.cache/stream-pipeline/kafka}
  VERSION_DIR=$(realpath -m -- "$cache_root/$KAFKA_VERSION")
  LIBS_DIR=$VERSION_DIR/libs
  FETCH_MARKER=$VERSION_DIR/.fetch-complete

  DATA_DIR=$(realpath -m -- "${KAFKA_DATA_DIR:-/tmp/stream-pipeline-kafka-$KAFKA_PORT}")
  [[ $DATA_DIR != / ]] || die "KAFKA_DATA_DIR must not be /"
  SERVER_PROPERTIES=$DATA_DIR/server.properties
  LOG_DIRS=$DATA_DIR/kraft-logs
  BROKER_LOG=$DATA_DIR/kafka.log
  PID_FILE=$DATA_DIR/kafka.pid
  BOOTSTRAP=127.0.0.1:$KAFKA_PORT

  local script_dir
  script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
  LOG_CONFIG=$script_dir/kafka-log4j2.properties
  [[ -r $LOG_CONFIG ]] || die "log config $LOG_CONFIG is missing; it ships next to kafka.sh"

  if [[ -n ${JAVA_HOME:-} ]]; then
    JAVA_BIN=$JAVA_HOME/bin/java
    [[ -x $JAVA_BIN ]] || die "JAVA_HOME=$JAVA_HOME has no bin/java; point it at a Java 17+ JDK"
  else
    JAVA_BIN=$(command -v java) || die "java not found; install Java 17+ or set JAVA_HOME"
  fi
}

# --- fetch -----------------------------------------------------------------------------------

fetch_jars() {
  if fetch_complete; then
    log "using cached Kafka $KAFKA_VERSION jars in $LIBS_DIR"
    return
  fi
  local mvn=${MVN:-mvn}
  command -v "$mvn" >/dev/null || die "maven ('$mvn') not found; install Maven 3.8+ or set MVN"
  mkdir -p -- "$VERSION_DIR"
  # Serialise concurrent fetches of one version (e.g. two test runs starting together).
  local lock_fd
  exec {lock_fd}>"$VERSION_DIR/.fetch.lock"
  flock "$lock_fd"
  if fetch_complete; then
    log "using cached Kafka $KAFKA_VERSION jars in $LIBS_DIR (fetched by a concurrent run)"
    exec {lock_fd}>&-
    return
  fi

  local pom=$VERSION_DIR/pom.xml partial=$VERSION_DIR/libs.partial
  write_fetch_pom "$pom"
  rm -rf -- "$partial" "$LIBS_DIR"
  log "resolving org.apache.kafka:kafka_2.13:$KAFKA_VERSION, org.apache.kafka:kafka-tools:$KAFKA_VERSION"
  log "  and org.apache.logging.log4j:$KAFKA_SLF4J_BINDING:$KAFKA_LOG4J_VERSION with Maven (helper pom $pom)"
  local started=$SECONDS maven_log=$VERSION_DIR/maven.log
  if ! "$mvn" -B -q -Dstyle.color=never -f "$pom" \
    "org.apache.maven.plugins:maven-dependency-plugin:$MAVEN_DEPENDENCY_PLUGIN_VERSION:copy-dependencies" \
    -DincludeScope=runtime -DoutputDirectory="$partial" >"$maven_log" 2>&1; then
    # Maven 3.8 colours its -q output even in batch mode; strip that before picking errors.
    sed -e 's/\x1b\[[0-9;]*m//g' -- "$maven_log" | grep -E '^\[ERROR\] [^ ]' | head -n 3 >&2 ||
      tail -n 20 -- "$maven_log" >&2
    die "maven could not resolve Kafka $KAFKA_VERSION (full output in $maven_log); check KAFKA_VERSION and KAFKA_LOG4J_VERSION, e.g. KAFKA_VERSION=4.3.1"
  fi
  check_fetched_jars "$partial"
  mv -- "$partial" "$LIBS_DIR"
  local jars
  jars=$(find "$LIBS_DIR" -maxdepth 1 -name '*.jar' | wc -l)
  printf 'kafka %s\nlog4j %s %s\njars %s\nfetched %s\n' "$KAFKA_VERSION" "$KAFKA_SLF4J_BINDING" \
    "$KAFKA_LOG4J_VERSION" "$jars" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$FETCH_MARKER"
  exec {lock_fd}>&-
  log "fetched $jars jars into $LIBS_DIR in $((SECONDS - started))s"
}

# Complete means: Maven finished, the jars passed check_fetched_jars, and they were fetched
# with the log4j binding and version asked for now.
fetch_complete() {
  [[ -f $FETCH_MARKER && -d $LIBS_DIR ]] &&
    grep -qxF "log4j $KAFKA_SLF4J_BINDING $KAFKA_LOG4J_VERSION" "$FETCH_MARKER"
}

# The helper project lives in the cache dir; the log4j artifacts are declared directly so
# log4j-api, log4j-core and the binding always resolve to one version.
write_fetch_pom() {
  local pom=$1
  cat >"$pom" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<!-- Generated by deploy/kafka.sh fetch: the runtime classpath of a Kafka $KAFKA_VERSION broker and its tools. -->
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.stream-pipeline</groupId>
  <artifactId>kafka-runtime</artifactId>
  <version>$KAFKA_VERSION</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>$KAFKA_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-api</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-core</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>$KAFKA_SLF4J_BINDING</artifactId>
      <version>$KAFKA_LOG4J_VERSION</version>
    </dependency>
  </dependencies>
</project>
EOF
}

# A binding for the wrong slf4j major leaves Kafka silent (slf4j falls back to a no-op logger),
# so the fetch is refused rather than cached.
check_fetched_jars() {
  local dir=$1
  local -a core slf4j binding
  mapfile -t core < <(find "$dir" -maxdepth 1 -name "kafka_2.13-$KAFKA_VERSION.jar")
  mapfile -t binding < <(find "$dir" -maxdepth 1 -name "$KAFKA_SLF4J_BINDING-*.jar")
  mapfile -t slf4j < <(find "$dir" -maxdepth 1 -name 'slf4j-api-*.jar')
  [[ ${#core[@]} -eq 1 ]] || die "maven did not deliver kafka_2.13-$KAFKA_VERSION.jar into $dir"
  [[ ${#binding[@]} -eq 1 ]] || die "maven did not deliver $KAFKA_SLF4J_BINDING into $dir"
  [[ ${#slf4j[@]} -eq 1 ]] || die "expected one slf4j-api jar in $dir, found ${#slf4j[@]}"
  local slf4j_jar want
  slf4j_jar=$(basename -- "${slf4j[0]}")
  if [[ $KAFKA_SLF4J_BINDING == log4j-slf4j-impl ]]; then want='slf4j-api-1.'; else want='slf4j-api-2.'; fi
  [[ $slf4j_jar == "$want"* ]] ||
    die "Kafka $KAFKA_VERSION resolved $slf4j_jar, which $KAFKA_SLF4J_BINDING cannot bind; set KAFKA_SLF4J_BINDING to the other binding"
  log "slf4j: $slf4j_jar bound by $(basename -- "${binding[0]}")"
}

# --- broker lifecycle ------------------------------------------------------------------------

start_broker() {
  fetch_jars
  if [[ $KAFKA_FRESH == 1 ]]; then
    stop_broker
    wipe_data_dir
  fi

  check_data_dir_ports
  local pid
  if pid=$(running_pid); then
    if broker_answers 15; then
      log "broker already running on $BOOTSTRAP (pid $pid, data $DATA_DIR)"
      return
    fi
    # Not started by this run, so it is left alone if it never answers.
    log "broker process $pid is running but not answering yet; waiting for it"
    wait_until_ready "$pid" "$SECONDS" keep
    return
  fi
  rm -f -- "$PID_FILE"
  local port
  for port in "$KAFKA_PORT" "$KAFKA_CONTROLLER_PORT"; do
    ! port_open "$port" ||
      die "port $port on 127.0.0.1 is taken by another process; stop it or choose another KAFKA_PORT/KAFKA_CONTROLLER_PORT"
  done

  prepare_data_dir
  write_server_properties
  format_storage_once

  local started=$SECONDS
  printf '\n==== kafka.sh: starting Kafka %s at %s ====\n' "$KAFKA_VERSION" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$BROKER_LOG"
  java_command server "$SERVER_CLASS" "$SERVER_PROPERTIES"
  # setsid + nohup: the broker leaves the caller's session and ignores its hangup, so it
  # outlives the shell that started it. Without job control setsid execs in place, so $! is
  # the JVM's own pid.
  # The data dir lock is closed for the broker, or it would hold it for its whole life.
  setsid nohup "${JAVA_CMD[@]}" >>"$BROKER_LOG" 2>&1 </dev/null {DATA_LOCK_FD}>&- &
  pid=$!
  echo "$pid" >"$PID_FILE"
  log "started broker pid $pid on $BOOTSTRAP (controller 127.0.0.1:$KAFKA_CONTROLLER_PORT), log $BROKER_LOG"
  wait_until_ready "$pid" "$started" stop
}

# Serialises start and stop on one data dir (e.g. parallel tests that each call start): the
# second caller waits and then finds the broker running. The lock file sits beside the data
# dir so KAFKA_FRESH can wipe the dir while holding it.
lock_data_dir() {
  local wait_s=$((KAFKA_START_TIMEOUT_S + KAFKA_STOP_TIMEOUT_S + 60))
  mkdir -p -- "$(dirname -- "$DATA_DIR")"
  exec {DATA_LOCK_FD}>"$DATA_DIR.lock"
  if ! flock -n "$DATA_LOCK_FD"; then
    log "another kafka.sh start/stop holds $DATA_DIR.lock; waiting up to ${wait_s}s"
    flock -w "$wait_s" "$DATA_LOCK_FD" || die "$DATA_DIR.lock still held after ${wait_s}s; is a kafka.sh start or stop hung?"
  fi
}

stop_broker() {
  local pid
  if ! pid=$(running_pid); then
    if [[ -f $PID_FILE ]]; then
      log "broker not running (removing stale $PID_FILE)"
      rm -f -- "$PID_FILE"
    else
      log "broker not running (data $DATA_DIR)"
    fi
    return
  fi
  log "stopping broker pid $pid (SIGTERM, up to ${KAFKA_STOP_TIMEOUT_S}s)"
  local started=$SECONDS
  kill -TERM "$pid" 2>/dev/null || true
  if wait_for_exit "$pid" "$KAFKA_STOP_TIMEOUT_S"; then
    log "broker stopped cleanly in $((SECONDS - started))s"
  else
    log "warning: broker pid $pid still running after ${KAFKA_STOP_TIMEOUT_S}s; sending SIGKILL (next start recovers its logs)"
    kill -KILL "$pid" 2>/dev/null || true
    wait_for_exit "$pid" 10 || die "broker pid $pid survived SIGKILL; inspect it with ps"
  fi
  rm -f -- "$PID_FILE"
}

broker_status() {
  check_data_dir_ports
  local pid
  if ! pid=$(running_pid); then
    echo "kafka down: no broker process for $DATA_DIR"
    if port_open "$KAFKA_PORT"; then
      echo "note: another process listens on 127.0.0.1:$KAFKA_PORT"
    fi
    return 1
  fi
  if ! broker_answers 15; then
    echo "kafka not answering: pid $pid runs but $BOOTSTRAP gives no answer (see $BROKER_LOG)"
    return 1
  fi
  echo "kafka up: $BOOTSTRAP, pid $pid, Kafka $KAFKA_VERSION, data $DATA_DIR"
}

# Prints the pid of this data dir's broker if that process is alive; fails otherwise.
# The command line is checked too, so a recycled pid is not mistaken for the broker.
running_pid() {
  [[ -f $PID_FILE ]] || return 1
  local pid
  pid=$(<"$PID_FILE")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  is_broker_process "$pid" || return 1
  echo "$pid"
}

is_broker_process() {
  local pid=$1 cmdline
  # A zombie has an empty cmdline, so it counts as gone.
  cmdline=$(tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline") || return 1
  [[ $cmdline == *" $SERVER_CLASS $SERVER_PROPERTIES"* ]]
}

# Liveness by pid alone, for the moment right after launch when the child may not have
# exec'd java yet. A zombie (exited, not yet reaped) counts as dead.
process_alive() {
  local pid=$1 stat
  stat=$(cat 2>/dev/null <"/proc/$pid/stat") || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

wait_for_exit() {
  local pid=$1 timeout_s=$2
  local deadline=$((SECONDS + timeout_s))
  while is_broker_process "$pid"; do
    ((SECONDS < deadline)) || return 1
    sleep 0.2
  done
}

# Waits until the broker answers an admin request; on timeout or early death it prints the
# end of the broker log, stops the broker if on_failure is "stop", and fails.
# usage: wait_until_ready PID STARTED_AT_SECONDS stop|keep
wait_until_ready() {
  local pid=$1 started=$2 on_failure=$3
  local deadline=$((started + KAFKA_START_TIMEOUT_S))
  while ((SECONDS < deadline)); do
    process_alive "$pid" || fail_start "$on_failure" "broker pid $pid exited during startup"
    if port_open "$KAFKA_PORT"; then
      local left=$((deadline - SECONDS))
      if ((left > 15)); then left=15; elif ((left < 5)); then left=5; fi
      if broker_answers "$left"; then
        log "broker answers on $BOOTSTRAP after $((SECONDS - started))s (pid $pid)"
        return
      fi
    fi
    sleep 0.5
  done
  fail_start "$on_failure" "broker did not answer on $BOOTSTRAP within ${KAFKA_START_TIMEOUT_S}s; raise KAFKA_START_TIMEOUT_S if the machine is slow"
}

fail_start() {
  local on_failure=$1 message=$2
  log "error: $message"
  if [[ -f $BROKER_LOG ]]; then
    log "last lines of $BROKER_LOG:"
    tail -n 40 -- "$BROKER_LOG" >&2
  fi
  if [[ $on_failure == stop ]]; then
    stop_broker
  else
    log "left broker running; deploy/kafka.sh stop ends it"
  fi
  exit 1
}

# True once the broker lists topics: a real admin round trip, not just an open socket.
broker_answers() {
  local timeout_s=$1
  java_command tool "$TOPIC_TOOL_CLASS" --bootstrap-server "$BOOTSTRAP" --list
  timeout --kill-after=5 "$timeout_s" "${JAVA_CMD[@]}" >/dev/null 2>&1
}

port_open() {
  local port=$1
  # The inner shell connects to the port passed as $1; connecting on loopback never blocks long.
  # shellcheck disable=SC2016
  timeout 2 bash -c ': <>"/dev/tcp/127.0.0.1/$1"' _ "$port" 2>/dev/null
}

# --- data dir and storage --------------------------------------------------------------------

prepare_data_dir() {
  if [[ -d $DATA_DIR && ! -f $DATA_DIR/$DATA_DIR_MARKER ]] &&
    [[ -n $(find "$DATA_DIR" -mindepth 1 -maxdepth 1 -print -quit) ]]; then
    die "KAFKA_DATA_DIR $DATA_DIR is not empty and was not created by kafka.sh; choose another dir"
  fi
  mkdir -p -- "$LOG_DIRS"
  touch -- "$DATA_DIR/$DATA_DIR_MARKER"
}

wipe_data_dir() {
  [[ -e $DATA_DIR ]] || return 0
  [[ -f $DATA_DIR/$DATA_DIR_MARKER ]] ||
    die "refusing to wipe $DATA_DIR: it lacks $DATA_DIR_MARKER, so kafka.sh did not create it"
  log "KAFKA_FRESH=1: wiping $DATA_DIR"
  rm -rf -- "$DATA_DIR"
}

# Regenerated on every start so it always matches the environment (check_data_dir_ports has
# refused a formatted data dir whose ports differ).
write_server_properties() {
  local listeners_line
  listeners_line=$(listeners_setting)
  cat >"$SERVER_PROPERTIES" <<EOF
# Generated by deploy/kafka.sh on every start; edits are overwritten.
# Single-node KRaft: this one process is both the broker and the only controller.

# KRaft without ZooKeeper: one JVM plays both roles (default: unset, which is not runnable).
process.roles=broker,controller
# Required in KRaft; the only node, so 1.
node.id=1
# Dynamic quorum (KIP-853): formatted with --standalone, this node is the only voter.
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
# Loopback only: nothing outside this machine should reach a development broker.
$listeners_line
# Clients are told to reconnect to exactly the loopback address they used.
advertised.listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT
# Required with process.roles containing controller: names the controller listener.
controller.listener.names=CONTROLLER
# Both listeners are unauthenticated plaintext on loopback.
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
# Named explicitly because the listeners are named: the broker talks to itself on PLAINTEXT.
inter.broker.listener.name=PLAINTEXT
# Partition logs and the KRaft metadata log live in the data dir, not in /tmp/kraft-combined-logs.
log.dirs=$LOG_DIRS

# One broker cannot hold more than one replica: internal topics default to 3 replicas
# (and min ISR 2), which a single node can never satisfy.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Stated although it is the default: with one replica, acks=all must not wait for a second.
min.insync.replicas=1
# Default kept (1); the pipeline creates its topics explicitly with create-topic.
num.partitions=1
# A producer writing to a misspelt topic gets an error instead of a new one-partition topic
# that nobody consumes and that would break partitioning by key.
auto.create.topics.enable=false
# Consumers join a group without the 3 s wait meant for many members arriving together,
# so tests and benchmarks start consuming at once.
group.initial.rebalance.delay.ms=0
EOF
}

# A formatted data dir keeps the ports it was formatted with: the controller's address is in
# the KRaft metadata log, and a running broker there listens on the old ports anyway.
check_data_dir_ports() {
  local wanted
  wanted=$(listeners_setting)
  if is_formatted && [[ -f $SERVER_PROPERTIES ]] && ! grep -qxF "$wanted" "$SERVER_PROPERTIES"; then
    die "$DATA_DIR was formatted for other ports ($(grep '^listeners=' "$SERVER_PROPERTIES")); use those ports, KAFKA_FRESH=1 or another KAFKA_DATA_DIR"
  fi
}

listeners_setting() {
  echo "listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT"
}

is_formatted() {
  [[ -f $LOG_DIRS/meta.properties ]]
}

format_storage_once() {
  if is_formatted; then
    log "storage in $LOG_DIRS already formatted (cluster $(cluster_id_of_data_dir))"
    return
  fi
  local cluster_id
  java_command tool "$STORAGE_TOOL_CLASS" random-uuid
  cluster_id=$("${JAVA_CMD[@]}") || die "kafka.tools.StorageTool random-uuid failed (output above)"
  log "formatting storage in $LOG_DIRS (cluster id $cluster_id, standalone controller)"
  java_command tool "$STORAGE_TOOL_CLASS" format --standalone -t "$cluster_id" -c "$SERVER_PROPERTIES"
  printf '\n==== kafka.sh: formatting %s at %s ====\n' "$LOG_DIRS" \
    "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >>"$BROKER_LOG"
  if ! "${JAVA_CMD[@]}" >>"$BROKER_LOG" 2>&1; then
    tail -n 20 -- "$BROKER_LOG" >&2
    die "formatting $LOG_DIRS failed (output above); KAFKA_FRESH=1 starts over"
  fi
}

cluster_id_of_data_dir() {
  sed -n 's/^cluster\.id=//p' "$LOG_DIRS/meta.properties"
}

# --- tools -----------------------------------------------------------------------------------

create_topic() {
  local name=$1 partitions=$2
  [[ $name =~ ^[A-Za-z0-9._-]{1,249}$ ]] ||
    die "topic name '$name' is invalid; use 1-249 characters from [A-Za-z0-9._-]"
  [[ $partitions =~ ^[1-9][0-9]*$ ]] || die "partition count '$partitions' must be a positive integer"
  fetch_jars
  port_open "$KAFKA_PORT" || die "no broker on $BOOTSTRAP; run deploy/kafka.sh start first"
  java_command tool "$TOPIC_TOOL_CLASS" --bootstrap-server "$BOOTSTRAP" --create --if-not-exists \
    --topic "$name" --partitions "$partitions" --replication-factor 1
  "${JAVA_CMD[@]}" >&2 || die "creating topic '$name' on $BOOTSTRAP failed (output above)"
  # --if-not-exists is silent about an existing topic of another size, which would break
  # partition routing, so the count is checked.
  local description actual
  java_command tool "$TOPIC_TOOL_CLASS" --bootstrap-server "$BOOTSTRAP" --describe --topic "$name"
  description=$("${JAVA_CMD[@]}") || die "describing topic '$name' on $BOOTSTRAP failed (output above)"
  actual=$(sed -n 's/.*PartitionCount:[[:space:]]*\([0-9][0-9]*\).*/\1/p' <<<"$description" | head -n 1)
  [[ -n $actual ]] || die "could not read the partition count of '$name' from: $description"
  [[ $actual == "$partitions" ]] ||
    die "topic '$name' exists with $actual partitions, not $partitions; delete it or start with KAFKA_FRESH=1"
  log "topic '$name' ready on $BOOTSTRAP: $partitions partitions, replication factor 1"
}

run_tool() {
  fetch_jars
  java_command tool "$@"
  exec "${JAVA_CMD[@]}"
}

# Builds the command line of every JVM this script starts into JAVA_CMD, so the broker and
# all tools share one java, one classpath and one log configuration.
# usage: java_command server|tool MAIN_CLASS [ARGS...]
java_command() {
  local role=$1
  shift
  local -a jvm=(-Djava.awt.headless=true "-Dlog4j2.configurationFile=$LOG_CONFIG" -cp "$LIBS_DIR/*")
  case $role in
    server)
      jvm+=(-Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20
        -XX:+ExplicitGCInvokesConcurrent -Dkafka.log.level=INFO)
      ;;
    tool) jvm+=("-Xmx$KAFKA_TOOL_HEAP" -Dkafka.log.level=WARN) ;;
    *) die "java_command: unknown role '$role'" ;;
  esac
  JAVA_CMD=("$JAVA_BIN" "${jvm[@]}" "$@")
}

# --- small checks ----------------------------------------------------------------------------

expect_args() {
  local want=$1
  shift
  [[ $# -eq $want ]] || die "expected $want argument(s), got $#; see deploy/kafka.sh help"
}

check_port() {
  if ! [[ $2 =~ ^[0-9]+$ ]] || (($2 < 1 || $2 > 65535)); then
    die "$1 must be a port 1-65535, got '$2'"
  fi
}

check_heap() {
  [[ $2 =~ ^[0-9]+[kKmMgG]?$ ]] || die "$1 must be a JVM heap size like 512m or 1g, got '$2'"
}

heap_mib() {
  local size=$1
  local number=${size%[kKmMgG]}
  case ${size#"$number"} in
    k | K) echo $((number / 1024)) ;;
    m | M) echo "$number" ;;
    g | G) echo $((number * 1024)) ;;
    *) echo $((number / 1048576)) ;;
  esac
}

check_seconds() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive number of seconds, got '$2'"
}

log() {
  printf 'kafka.sh: %s\n' "$*" >&2
}

die() {
  log "error: $*"
  exit 1
}

main "$@"
