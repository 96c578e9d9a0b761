package main

import (
	"context"
	"strings"
	"testing"
)

// `vehicle-sim drill failover`: its help names the flags and their SIM_DRILL_* variables;
// wrong arguments are usage errors (exit 2) that say what is wrong. (The drill itself runs in
// vehicle-sim/bench's tests.)
func TestDrillCommandLine(t *testing.T) {
	code, stdout, _ := runMain(context.Background(), []string{"drill", "failover", "--help"}, nil)
	for _, want := range []string{"--replicas", "--store", "--cars", "--duration", "--rate", "--json", "SIM_DRILL_REPLICAS", "SIGKILL"} {
		if code != 0 || !strings.Contains(stdout.String(), want) {
			t.Fatalf("help: exit %d, %q missing:\n%s", code, want, stdout)
		}
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"drill"}, "name a drill: failover"},
		{[]string{"drill", "outage"}, `unknown command "outage"`},
		{[]string{"drill", "failover", "--cars", "0"}, "--cars 0"},
		{[]string{"drill", "failover", "--store", "bbolt"}, "--store bbolt: one replica only"},
		{[]string{"drill", "failover", "--duration", "1s", "--rate", "0"}, "--rate"},
		{[]string{"drill", "failover", "--actions", "lock,fly"}, `"fly" is not an action`},
	} {
		code, _, stderr := runMain(context.Background(), tc.args, nil)
		if code != 2 || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 and %q", tc.args, code, stderr, tc.want)
		}
	}
}
