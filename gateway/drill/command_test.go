package drill

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"

	"telematics/pkg/cmdline"
)

// `gateway drill outage --json | jq .ok`: the progress goes to stderr, stdout is one JSON line
// whose "ok" is true, and the exit status is 0.
func TestOutageCommandJSON(t *testing.T) {
	root := cmdline.NewRoot("gateway", "test", "GATEWAY")
	root.AddCommand(Command())
	var out, errb bytes.Buffer
	code := cmdline.Execute(context.Background(), root, []string{"drill", "outage", "--json", "--cars", "2", "--data", t.TempDir()},
		strings.NewReader(""), &out, &errb)
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	var rep Report
	if len(lines) != 1 || json.Unmarshal([]byte(lines[0]), &rep) != nil {
		t.Fatalf("stdout is not one JSON line: %q", out.String())
	}
	if code != 0 || !rep.OK || rep.Cars != 2 {
		t.Fatalf("exit %d, report %+v\nstderr:\n%s", code, rep, errb.String())
	}
	if !strings.Contains(errb.String(), "the cloud is down") {
		t.Fatalf("the progress is not on stderr: %q", errb.String())
	}
}
