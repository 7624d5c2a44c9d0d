#!/bin/sh
# tegrastats stand-in for FleetDesk lab Jetsons. It imitates the recorded lines in
# tests/fixtures/recorded/ (see SOURCES.md there):
#   tegra_model orin                 -> tegrastats-orin-nano.txt line 1 (L4T R36, run as root)
#   tegra_model xavier, L4T R35+     -> tegrastats-xavier-nx.txt line 2 (JetPack 5.1.2)
#   tegra_model xavier, L4T R32      -> tegrastats-xavier-nx.txt line 1 (JetPack 4)
# The L4T release is read from /etc/nv_tegra_release, as on a real Jetson.
# Values come from the files fleetdesk.lab.sensors writes (thermal zones under /sys, the rest under
# /var/lib/fleetdesk-lab/sensors). Plain POSIX sh with builtins only, apart from date and sleep once
# per line: python3 takes about a second to start under qemu-user on arm64 devices.
# Every path is prefixed by ${FLEETDESK_LAB_ROOT:-} (empty on a device) so tests can use a temp root.

R="${FLEETDESK_LAB_ROOT:-}"
S="$R/var/lib/fleetdesk-lab/sensors"
PIDFILE="$R/var/lib/fleetdesk-lab/tegrastats.pid"

usage() {
    printf '%s\n' \
        "Usage: tegrastats [-option]" \
        "Options:" \
        "        --help                  : print this help screen" \
        "        --interval <millisec>   : sample the information in <milliseconds>" \
        "        --logfile  <filename>   : dump the output of tegrastats to <filename>" \
        "        --start                 : run tegrastats as a daemon process in the background" \
        "        --stop                  : stop any running instances of tegrastats" \
        "        --verbose               : print verbose message"
}

# val VAR FILE DEFAULT: read the first line of FILE into VAR (builtins only, no fork).
val() {
    _v=$3
    if [ -r "$2" ]; then IFS= read -r _v <"$2" || :; fi
    eval "$1=\$_v"
}

# fmt_mc MILLIDEGREES: sets T to the way tegrastats prints it: 50031 -> 50.031, 45500 -> 45.5, 50000 -> 50.
fmt_mc() {
    _m=$1 _s=
    case $_m in -*) _s=- _m=${_m#-} ;; esac
    _i=$((_m / 1000)) _f=$((_m % 1000))
    if [ "$_f" -eq 0 ]; then T="$_s$_i"; return; fi
    if [ "$_f" -lt 10 ]; then _f="00$_f"; elif [ "$_f" -lt 100 ]; then _f="0$_f"; fi
    while :; do case $_f in *0) _f=${_f%0} ;; *) break ;; esac; done
    T="$_s$_i.$_f"
}

interval=1000 logfile= start=0
while [ $# -gt 0 ]; do
    case $1 in
        --interval) interval=${2:?--interval needs milliseconds}; shift ;;
        --interval=*) interval=${1#*=} ;;
        --logfile) logfile=${2:?--logfile needs a file name}; shift ;;
        --logfile=*) logfile=${1#*=} ;;
        --start) start=1 ;;
        --stop)
            if [ -r "$PIDFILE" ]; then
                IFS= read -r pid <"$PIDFILE" || :
                [ -n "$pid" ] && kill "$pid" 2>/dev/null
                rm -f "$PIDFILE"
            fi
            exit 0 ;;
        --verbose | --readall) ;;
        --help | -h) usage; exit 0 ;;
        *) usage >&2; exit 1 ;;
    esac
    shift
done
case $interval in '' | *[!0-9]*) echo "tegrastats: invalid interval '$interval'" >&2; exit 1 ;; esac
[ "$interval" -gt 0 ] || interval=1000
secs="$((interval / 1000)).$((interval % 1000 / 100))$((interval % 100 / 10))$((interval % 10))"

if [ ! -d "$S" ]; then
    echo "tegrastats: no sensor readings under $S" >&2
    exit 1
fi
val model "$S/tegra_model" orin
val release "$R/etc/nv_tegra_release" "# R36"
case $model/$release in
    xavier/"# R32"*) format=xavier-r32 ;;
    xavier/*) format=xavier ;;
    *) format=orin ;;
esac
# The order tegrastats prints the zones in (recorded); zones not listed follow in zone order.
case $format in
    orin) order="cpu soc2 soc0 gpu tj soc1" ;;
    xavier) order="AUX CPU thermal AO GPU PMIC" ;;
    *) order="AO GPU PMIC AUX CPU thermal" ;;
esac

if [ "$start" = 1 ]; then
    [ -n "$logfile" ] || { echo "tegrastats: --start needs --logfile" >&2; exit 1; }
    /bin/sh "$0" --interval "$interval" --logfile "$logfile" </dev/null >/dev/null 2>&1 &
    echo $! >"$PIDFILE"
    exit 0
fi
[ -n "$logfile" ] && exec >>"$logfile"

samples=0
while :; do
    samples=$((samples + 1))
    val ram_used "$S/ram_used_mb" 0
    val ram_total "$S/ram_total_mb" 0
    val lfb "$S/ram_lfb" 1x4MB
    val swap_used "$S/swap_used_mb" 0
    val swap_total "$S/swap_total_mb" 0
    val swap_cached "$S/swap_cached_mb" 0
    val utils "$S/cpu_util_pct" 0
    val freqs "$S/cpu_freq_mhz" 0
    val gpu "$S/gpu_util_pct" 0
    val gpu_mhz "$S/gpu_freq_mhz" 0
    val emc "$S/emc_util_pct" 0
    val emc_mhz "$S/emc_freq_mhz" 0
    val rails "$S/power_rails" ""

    # CPU [util%@MHz,...]: utilisations and clocks pair up by position.
    cpus= sum=0 n=0
    for u in $utils; do
        f=${freqs%% *}
        freqs=${freqs#"$f"}
        freqs=${freqs# }
        cpus="$cpus${cpus:+,}$u%@${f:-0}"
        sum=$((sum + u)) n=$((n + 1))
    done
    avg=$((n > 0 ? sum / n : 0))

    # Temperatures: label = zone type up to the first "-" (cpu-thermal -> cpu, PMIC-Die -> PMIC);
    # zones at -256 C (powered off) are left out, as tegrastats does.
    pairs=
    i=0
    while [ -r "$R/sys/class/thermal/thermal_zone$i/type" ]; do
        val type "$R/sys/class/thermal/thermal_zone$i/type" ""
        val mc "$R/sys/class/thermal/thermal_zone$i/temp" -256000
        i=$((i + 1))
        case $mc in '' | *[!0-9-]*) continue ;; esac
        [ "$mc" -le -256000 ] && continue
        fmt_mc "$mc"
        pairs="$pairs ${type%%-*}=$T"
    done
    temps=
    for label in $order; do
        case "$pairs " in
            *" $label="*)
                rest=${pairs#*" $label="}
                t=${rest%% *}
                temps="$temps $label@${t}C"
                pairs=${pairs%%" $label="*}${rest#"$t"} ;;
        esac
    done
    for p in $pairs; do temps="$temps ${p%%=*}@${p#*=}C"; done

    # Power: current and the average since this tegrastats started.
    power=
    for r in $rails; do
        case $r in *[!A-Za-z0-9_]*) continue ;; esac  # the name becomes a variable name below
        val mw "$S/rail_${r}_mw" 0
        eval "sum_$r=\$((\${sum_$r:-0} + mw))"
        eval "avg_mw=\$((sum_$r / samples))"
        if [ "$format" = xavier-r32 ]; then
            power="$power $r $mw/$avg_mw"
        else
            power="$power $r ${mw}mW/${avg_mw}mW"
        fi
    done

    mem="RAM $ram_used/${ram_total}MB (lfb $lfb) SWAP $swap_used/${swap_total}MB (cached ${swap_cached}MB)"
    case $format in
        orin)
            line="$(date '+%m-%d-%Y %H:%M:%S') $mem CPU [$cpus] EMC_FREQ $emc%@$emc_mhz GR3D_FREQ $gpu%@[$gpu_mhz]"
            line="$line NVDEC off NVJPG off NVJPG1 off VIC off OFA off APE 200$temps$power" ;;
        xavier)
            line="$(date '+%m-%d-%Y %H:%M:%S') $mem CPU [$cpus] EMC_FREQ $emc%@$emc_mhz GR3D_FREQ $gpu%@[$gpu_mhz]"
            line="$line VIC_FREQ 115 APE 150$temps$power" ;;
        *)
            line="$mem CPU [$cpus] EMC_FREQ $emc%@$emc_mhz GR3D_FREQ $gpu%@$gpu_mhz APE 150"
            line="$line MTS fg $((avg / 8))% bg $((avg / 3))%$temps$power" ;;
    esac
    printf '%s\n' "$line" || exit 0
    sleep "$secs"
done
