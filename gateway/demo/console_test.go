package demo

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/cookiejar"
	"os"
	"regexp"
	"sync"
	"testing"
	"time"

	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"telematics/gateway/console"
	"telematics/internal/testutil"
)

// syncBuffer is a stdout the test reads while the demo writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// `gateway demo --console`: after the story it prints the console's URL and an operator
// login that works (first login, TOTP enrollment, the fleet), and runs until stopped.
func TestDemoConsolePrintsAWorkingLogin(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() { done <- Main(ctx, []string{"--console", "--cars", "2"}, &out, &errb) }()

	re := regexp.MustCompile(`The operator console: (https://\S+)/\n\s+\(HTTPS with the demo's own CA: trust (\S+),[^\n]*\n\s+Log in as operator: (\S+)\n\s+password: (\S+)`)
	var m []string
	testutil.EventuallyTrue(t, 3*time.Minute, func() bool {
		select {
		case code := <-done:
			t.Fatalf("the demo ended (%d) before printing the console:\n%s\n%s", code, out.String(), errb.String())
		default:
		}
		m = re.FindStringSubmatch(out.String())
		return m != nil
	})
	base, caFile, name, password := m[1], m[2], m[3], m[4]
	ca, err := os.ReadFile(caFile)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(ca)
	jar, _ := cookiejar.New(nil)
	hc := &http.Client{Jar: jar, Timeout: time.Minute, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	csrf := ""
	post := func(path string, body any, into any) {
		t.Helper()
		j, _ := json.Marshal(body)
		req, _ := http.NewRequest("POST", base+path, bytes.NewReader(j))
		req.Header.Set("Content-Type", "application/json")
		if csrf != "" {
			req.Header.Set(console.CSRFHeader, csrf)
		}
		res, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		if res.StatusCode != http.StatusOK || json.Unmarshal(b, into) != nil {
			t.Fatalf("POST %s: %d %s", path, res.StatusCode, b)
		}
	}
	var s console.Session
	post("/console/api/login", console.LoginRequest{Operator: name, Password: password}, &s)
	if s.Enroll == nil {
		t.Fatalf("first login without an enrollment: %+v", s)
	}
	csrf = s.CSRF
	code, err := totp.GenerateCodeCustom(s.Enroll.Secret, time.Now(), totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	post("/console/api/enroll", console.CodeRequest{Code: code}, &s)
	res, err := hc.Get(base + "/console/api/fleet")
	if err != nil {
		t.Fatal(err)
	}
	var fl console.Fleet
	err = json.NewDecoder(res.Body).Decode(&fl)
	res.Body.Close()
	if res.StatusCode != http.StatusOK || err != nil || len(fl.Cars) != 2 {
		t.Fatalf("fleet: %d %v %+v", res.StatusCode, err, fl)
	}

	cancel() // Ctrl-C
	select {
	case code := <-done:
		if code != 0 {
			t.Errorf("exit %d after the story went well:\n%s", code, errb.String())
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("the demo did not stop")
	}
	assertEmpty(t, os.Getenv("TMPDIR"))
}
