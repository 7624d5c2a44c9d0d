#!/bin/sh
# vcgencmd stand-in for FleetDesk lab Raspberry Pis. It imitates tests/fixtures/recorded/vcgencmd.txt
# (a Pi running Raspberry Pi OS: clock ids, formats of measure_temp/measure_clock/measure_volts/get_mem/
# get_throttled/version) and vcgencmd-error.txt (an unknown command: two lines on stdout, exit 255,
# as raspberrypi/utils vcgencmd.c prints them). See SOURCES.md there.
# Values come from the files fleetdesk.lab.sensors writes: thermal_zone0 for the SoC temperature and
# /var/lib/fleetdesk-lab/sensors for the rest. POSIX sh with builtins only: python3 takes about a second
# to start under qemu-user on arm64 devices. Paths are prefixed by ${FLEETDESK_LAB_ROOT:-} for tests.

R="${FLEETDESK_LAB_ROOT:-}"
S="$R/var/lib/fleetdesk-lab/sensors"

# val VAR FILE DEFAULT: read the first line of FILE into VAR without forking.
val() {
    _v=$3
    if [ -r "$2" ]; then IFS= read -r _v <"$2" || :; fi
    eval "$1=\$_v"
}

# The firmware's answer to a command or argument it does not know.
not_registered() {
    printf '%s\n' "vc_gencmd_read_response returned -1" 'error=1 error_msg="Command not registered"'
    exit 255
}

if [ $# -eq 0 ]; then
    printf '%s\n' \
        "Usage: vcgencmd command [ params ]" \
        "Send a command to the VideoCore and print the result." "" \
        "Without any argument this information is shown." "" \
        "Use the command 'vcgencmd commands' to get a list of available commands" "" \
        "Exit status:" \
        "   0    command completed successfully" \
        " else   VideoCore returned an error" "" \
        "For further documentation please see" \
        "https://www.raspberrypi.com/documentation/computers/os.html#vcgencmd" ""
    exit 0
fi

case $1 in
    measure_temp)
        val mc "$R/sys/class/thermal/thermal_zone0/temp" 0
        d=$(((mc + 50) / 100))  # tenths of a degree
        echo "temp=$((d / 10)).$((d % 10))'C" ;;
    get_throttled)
        val t "$S/throttled" 0x0
        echo "throttled=$t" ;;
    measure_clock)
        # Clock ids as the firmware numbers them (recorded on a Pi 4).
        file= hz=0
        case ${2-} in
            arm) id=48 file=arm_freq_hz ;;
            core) id=1 file=core_freq_hz ;;
            v3d) id=46 file=v3d_freq_hz ;;
            h264) id=28 ;;
            isp) id=45 ;;
            uart) id=22 hz=48001464 ;;
            pwm) id=25 hz=107143064 ;;
            emmc) id=50 hz=250000496 ;;
            pixel) id=29 hz=74988280 ;;
            vec) id=10 ;;
            hdmi) id=9 hz=119997072 ;;
            dpi) id=4 ;;
            *) id=0 ;;  # not recorded: an unknown clock name is assumed to read as clock 0
        esac
        [ -n "$file" ] && val hz "$S/$file" 0
        echo "frequency($id)=$hz" ;;
    measure_volts)
        case ${2:-core} in
            core) val v "$S/core_volts" 0.8600 ;;
            sdram_c | sdram_i | sdram_p) v=1.1000 ;;
            *) not_registered ;;  # not recorded; the firmware's exact answer is unknown
        esac
        echo "volt=${v}V" ;;
    get_mem)
        case ${2-} in
            arm) val m "$S/arm_mem_mb" 948 ;;
            gpu) val m "$S/gpu_mem_mb" 76 ;;
            *) not_registered ;;
        esac
        echo "$2=${m}M" ;;
    version)
        printf '%s\n' "Feb 29 2024 12:24:53" "Copyright (c) 2012 Broadcom" \
            "version f4e2138c2adc8f3a92a3a65939e458f11d7298ba (clean) (release) (start)" ;;
    commands)
        echo 'commands="commands, set_logging, bootloader_config, bootloader_version, cache_flush, codec_enabled, get_mem, get_rsts, measure_clock, measure_temp, measure_volts, get_hvs_asserts, get_config, get_throttled, pmicrd, pmicwr, read_ring_osc, version, readmr, otp_dump, set_vll_dir, set_backlight, get_lcd_info, arbiter, test_result, get_camera, enable_clock, scaling_kernel, scaling_sharpness, hdmi_ntsc_freqs, hdmi_adjust_clock, hdmi_status_show, hvs_update_fields, pwm_speedup, force_audio, hdmi_stream_channels, hdmi_channel_map, display_power, memtest, dispmanx_list, schmoo, render_bar, disk_notify, inuse_notify, sus_suspend, sus_status, sus_is_enabled, sus_stop_test_thread, egl_platform_switch, mem_validate, mem_oom, mem_reloc_stats, hdmi_cvt, hdmi_timings, file, vcos, ap_output_control, ap_output_post_processing, vchi_test_init, vchi_test_exit, pm_set_policy, pm_get_status, pm_show_stats, pm_start_logging, pm_stop_logging, vctest_memmap, vctest_start, vctest_stop, vctest_set, vctest_get"' ;;
    *) not_registered ;;
esac
