package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat: 100 on every Linux
// architecture Go supports.
const clockTicks = 100

// procSample is one reading of a process's memory and CPU from /proc.
type procSample struct {
	At      time.Time
	RSSKB   int64 // VmRSS: resident memory, anonymous and file-backed (bbolt's mmap)
	AnonKB  int64 // RssAnon: heap, stacks, buffers; what the process allocated itself
	HWMKB   int64 // VmHWM: the highest VmRSS so far
	CPU     time.Duration
	Threads int
	// CtxSwitches is voluntary plus nonvoluntary context switches summed over the process's
	// threads (/proc/PID/task/*/status; the process's own status counts its first thread only).
	CtxSwitches int64
}

// readProc reads /proc/PID/status and /proc/PID/stat.
func readProc(pid int) (procSample, error) {
	s := procSample{At: time.Now()}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		field := strings.Fields(val)
		if len(field) == 0 {
			continue
		}
		n, _ := strconv.ParseInt(field[0], 10, 64)
		switch key {
		case "VmRSS":
			s.RSSKB = n
		case "RssAnon":
			s.AnonKB = n
		case "VmHWM":
			s.HWMKB = n
		case "Threads":
			s.Threads = int(n)
		}
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("read CPU time of process %d: %w", pid, err)
	}
	// The command name (field 2) is in parentheses and may contain spaces: fields are counted
	// after its closing parenthesis. utime and stime are fields 14 and 15.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return s, fmt.Errorf("process %d: malformed /proc/PID/stat", pid)
	}
	fields := strings.Fields(string(stat[i+1:]))
	if len(fields) < 13 {
		return s, fmt.Errorf("process %d: short /proc/PID/stat", pid)
	}
	utime, _ := strconv.ParseInt(fields[11], 10, 64)
	stime, _ := strconv.ParseInt(fields[12], 10, 64)
	s.CPU = time.Duration(utime+stime) * time.Second / clockTicks
	s.CtxSwitches = ctxSwitches(pid)
	return s, nil
}

// ctxSwitches sums the context switches of the process's threads (0 if unreadable). A thread
// that exited took its count with it; Go's threads live as long as the process.
func ctxSwitches(pid int) int64 {
	dir := fmt.Sprintf("/proc/%d/task", pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return 0
	}
	var sum int64
	for _, t := range tasks {
		b, err := os.ReadFile(dir + "/" + t.Name() + "/status")
		if err != nil {
			continue // the thread ended meanwhile
		}
		sum += parseCtxSwitches(b)
	}
	return sum
}

// parseCtxSwitches reads voluntary_ctxt_switches plus nonvoluntary_ctxt_switches from one
// /proc/…/status.
func parseCtxSwitches(status []byte) int64 {
	var sum int64
	for _, line := range strings.Split(string(status), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok || (key != "voluntary_ctxt_switches" && key != "nonvoluntary_ctxt_switches") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSpace(val), 10, 64)
		if err == nil {
			sum += n
		}
	}
	return sum
}

// cpuPercent is the CPU used between two samples as a percentage of one core.
func cpuPercent(a, b procSample) float64 {
	wall := b.At.Sub(a.At)
	if wall <= 0 {
		return 0
	}
	return 100 * float64(b.CPU-a.CPU) / float64(wall)
}

// loadAverage is the host's 1-minute load average (0 if unknown).
func loadAverage() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}
