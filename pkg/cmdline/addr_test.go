package cmdline

import (
	"strings"
	"testing"
)

func TestAddrOffIsTheOneSpelling(t *testing.T) {
	tests := []struct {
		value, addr string
		off         bool
		err         string
	}{
		{"off", "", true, ""},
		{"127.0.0.1:1883", "127.0.0.1:1883", false, ""},
		{":0", ":0", false, ""},
		{"[::1]:1882", "[::1]:1882", false, ""},
		{"", "", false, "--ws-addr: empty address; write off to disable the listener"},
		{"none", "", false, `--ws-addr: "none" is not HOST:PORT`},
		{"false", "", false, "is not HOST:PORT"},
		{"127.0.0.1", "", false, "is not HOST:PORT"},
		{"host:http", "", false, "no valid port"},
		{"host:70000", "", false, "no valid port"},
	}
	for _, tc := range tests {
		addr, off, err := Addr("--ws-addr", tc.value)
		if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
			t.Errorf("%q: error %v, want %q", tc.value, err, tc.err)
		}
		if addr != tc.addr || off != tc.off {
			t.Errorf("%q: got %q off=%v", tc.value, addr, off)
		}
	}
}
