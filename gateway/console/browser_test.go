package console_test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/pquerna/otp"
	"github.com/pquerna/otp/totp"

	"telematics/gateway/accounts"
	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// The console in headless Chromium (Debian's chromium) against a real gateway and a fleet of
// simulated cars (gateway/harness). Screenshots go to $ARTIFACTS, else the test's TempDir.

var cheap = accounts.Params{MemoryKiB: 64, Iterations: 1, Parallelism: 1}

const (
	opPassword = "operator password 1"
	pageWait   = 45 * time.Second // generous: a loaded 2-core machine under -race
)

func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	t.Skip("no chromium on PATH: apt-get install chromium (.ci/run does) to run the console's browser tests")
	return ""
}

func artifacts(t *testing.T) string {
	dir := os.Getenv("ARTIFACTS")
	if dir == "" {
		return t.TempDir()
	}
	dir = filepath.Join(dir, "console")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// page is one browser tab on the console.
type page struct {
	t    *testing.T
	ctx  context.Context
	base string
	shot string
}

func (p *page) do(what string, steps ...chromedp.Action[chromedp.Void]) {
	p.t.Helper()
	if err := chromedp.Do(p.ctx, steps...); err != nil {
		p.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
		p.t.Fatalf("%s: %v", what, err)
	}
}

// click clicks the elements sels, in order, in one script run once they all exist: a live
// update re-renders rows and car pages, so a node looked up first and clicked later (as
// chromedp.Click does) may be gone by then ("Could not find node with given id").
func (p *page) click(what string, sels ...string) {
	p.t.Helper()
	var exist, clicks []string
	for _, sel := range sels {
		q := fmt.Sprintf("document.querySelector(%q)", sel)
		exist = append(exist, q+" !== null")
		clicks = append(clicks, q+".click();")
	}
	p.until(what+": "+strings.Join(sels, ", ")+" shown", strings.Join(exist, " && "))
	p.do(what, chromedp.Evaluate[chromedp.Void](strings.Join(clicks, " ")))
}

// until polls a JavaScript predicate in the page.
func (p *page) until(what, js string) {
	p.t.Helper()
	if _, err := chromedp.Run(p.ctx, chromedp.Poll[bool](js, chromedp.WithPollingTimeout(pageWait), chromedp.WithPollingInterval(50*time.Millisecond))); err != nil {
		p.screenshot("failed-" + strings.ReplaceAll(what, " ", "-"))
		html, _ := chromedp.Run(p.ctx, chromedp.OuterHTML("main"))
		p.t.Fatalf("%s: %v\n%s", what, err, html)
	}
}

func (p *page) text(sel string) string {
	p.t.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.TextContent(sel))
	if err != nil {
		p.t.Fatalf("text of %s: %v", sel, err)
	}
	return s
}

func (p *page) screenshot(name string) {
	b, err := chromedp.Run(p.ctx, chromedp.FullScreenshot(100)) // 100: PNG
	if err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
		return
	}
	path := filepath.Join(p.shot, name+".png")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		p.t.Logf("screenshot %s: %v", name, err)
	}
}

// goHash shows the console's page at hash: the first time by loading the page, after that by
// setting location.hash, as a link does. Not chromedp.Navigate on the loaded page: that is a
// same-document navigation, on which it may wait for a load event that never comes.
func (p *page) goHash(what, hash string) {
	p.t.Helper()
	loaded, err := chromedp.Run(p.ctx, chromedp.Evaluate[bool](`document.querySelector('#app') !== null`))
	if err == nil && loaded {
		p.do(what, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = %q`, hash)))
		return
	}
	p.do(what, chromedp.Navigate(p.base+"/"+hash))
}

// login fills the login form; code may be "".
func (p *page) login(name, code string) {
	p.t.Helper()
	p.goHash("open the login page", "#login")
	p.do("see the login form", chromedp.WaitVisible("#login-form"))
	fill := fmt.Sprintf(`document.querySelector('#operator').value = %q; document.querySelector('#password').value = %q;
		document.querySelector('#code').value = %q`, name, opPassword, code)
	p.do("fill the login form", chromedp.Evaluate[chromedp.Void](fill), chromedp.Click("#login-submit"))
}

func (p *page) logout() {
	p.t.Helper()
	p.do("log out", chromedp.Click("#logout"), chromedp.WaitVisible("#login-form"))
}

// enroll goes through the first login and returns the TOTP secret the page showed.
func (p *page) enroll(name string) string {
	p.t.Helper()
	p.login(name, "")
	p.do("see the QR code", chromedp.WaitVisible("#enroll-qr"))
	p.screenshot("enroll-" + name)
	secret := strings.TrimSpace(p.text("#enroll-secret"))
	p.do("confirm the enrollment", chromedp.SendKeys("#enroll-code", code(p.t, secret, time.Now())), chromedp.Click("#enroll-submit"),
		chromedp.WaitVisible("#recovery"))
	p.screenshot("recovery-codes-" + name)
	p.do("continue to the fleet", chromedp.Click("#recovery-done"))
	p.until("the fleet", `document.querySelector('#fleet-rows')?.offsetParent != null`)
	return secret
}

func code(t *testing.T, secret string, at time.Time) string {
	t.Helper()
	c, err := totp.GenerateCodeCustom(secret, at, totp.ValidateOpts{Period: 30, Digits: otp.DigitsSix, Algorithm: otp.AlgorithmSHA1})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestConsoleInChromium(t *testing.T) {
	bin := chromium(t)
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.TwoFA.Mode = twofa.ModeOff // the phone's commands need no code here; the console's login always does
	}})
	creds, err := cloud.Provision(ctx, 3)
	if err != nil {
		t.Fatal(err)
	}
	vins := []string{creds[0].VIN, creds[1].VIN, creds[2].VIN}
	mine := vins[0]
	alice := &harness.Person{Name: "alice", Password: "alice password 1"}
	if err := cloud.AddUser(ctx, alice.Name, alice.Password, mine); err != nil {
		t.Fatal(err)
	}
	harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: cloud.BrokerURL(), Creds: creds, TelemetryInterval: 200 * time.Millisecond})
	if err := cloud.WaitOnline(ctx, pageWait, vins...); err != nil {
		t.Fatal(err)
	}
	if err := alice.Login(ctx, cloud); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Enroll(ctx, cloud); err != nil {
		t.Fatal(err)
	}
	if _, err := alice.Pair(ctx, mine); err != nil {
		t.Fatal(err)
	}
	app, err := phone.ConnectWith(ctx, alice.Session, phone.ConnectOptions{Key: alice.Key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app.Close() })
	admin := cloud.Client()
	if _, err := admin.AddOperator(ctx, "olga", "admin", opPassword); err != nil {
		t.Fatal(err)
	}
	if _, err := admin.AddOperator(ctx, "vera", "viewer", opPassword); err != nil {
		t.Fatal(err)
	}

	actx, cancel := chromedp.NewExecAllocator(ctx, append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(bin), chromedp.NoSandbox, chromedp.DisableGPU, chromedp.WindowSize(1280, 900))...)
	defer cancel()
	bctx, cancel := chromedp.NewContext(actx)
	defer cancel()
	bctx, cancel = context.WithTimeout(bctx, 4*time.Minute)
	defer cancel()
	p := &page{t: t, ctx: bctx, base: cloud.HTTPURL(), shot: artifacts(t)}
	t.Logf("screenshots in %s", p.shot)

	// An operator enrolls TOTP at the first login, from the QR code's secret.
	secret := p.enroll("olga")

	// The fleet shows every car of the harness fleet, online, on the list and on the map.
	for _, vin := range vins {
		p.until("car "+vin+" listed online", fmt.Sprintf(`document.querySelector('#car-%s td[data-field=state]')?.textContent === 'online'`, vin))
	}
	p.until("markers on the map", `document.querySelectorAll('#map canvas, #map path.leaflet-interactive').length > 0`)
	p.screenshot("fleet")

	// A phone's commands change the car's lock state in the open page, without a reload.
	lockCell := fmt.Sprintf(`document.querySelector('#car-%s td[data-field=lock]')?.textContent`, mine)
	p.do("mark the page", chromedp.Evaluate[chromedp.Void](`window.__sameDocument = true`))
	for _, step := range []struct {
		action protocol.Action
		want   string
	}{{protocol.ActionUnlock, "unlocked"}, {protocol.ActionLock, "locked"}} {
		rep, err := app.Send(ctx, phone.Request{VIN: mine, Action: step.action}, nil)
		if err != nil || rep.Status != protocol.ReplyExecuted {
			t.Fatalf("phone %s: %+v %v", step.action, rep, err)
		}
		p.until("lock state "+step.want, lockCell+` === '`+step.want+`'`)
	}
	p.until("still the same page", `window.__sameDocument === true`)
	p.screenshot("fleet-after-lock")

	// The car page: twin signals, users, keys.
	p.click("open the car page", fmt.Sprintf(`#car-%s a`, mine))
	p.until("the car page", `document.querySelector('#car-state')?.offsetParent != null`)
	p.until("car page shows alice's key", `document.querySelector('#car-keys')?.textContent.includes('alice')`)
	p.until("car page shows signals", `document.querySelector('#car-signals')?.textContent.includes('Vehicle.Speed')`)
	p.screenshot("car")

	// A wrong code, then a right one, then the same code again: refused, accepted, replayed.
	p.logout()
	p.login("olga", "000000")
	p.until("wrong code refused", `document.querySelector('#login-error')?.textContent.includes('totp_invalid')`)
	p.screenshot("login-wrong-code")
	next := code(t, secret, time.Now().Add(30*time.Second)) // after the enrollment's step, inside the skew
	p.login("olga", next)
	p.until("log in with a code", `document.querySelector('#fleet-rows')?.offsetParent != null`)
	p.logout()
	p.login("olga", next)
	p.until("replayed code refused", `document.querySelector('#login-error')?.textContent.includes('totp_replayed')`)
	p.screenshot("login-replayed-code")

	// A viewer's admin action is refused by the server.
	p.enroll("vera")
	p.do("try an admin action as a viewer",
		chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`),
		chromedp.SendKeys("#admin-user", alice.Name), chromedp.Click("#admin-unlock"))
	p.until("viewer refused with 403", `document.querySelector('#admin-result')?.textContent.startsWith('403')`)
	p.screenshot("viewer-refused")

	// The open page survives a gateway restart without a reload: the session is in the store,
	// and the event stream reconnects and starts over from the whole fleet.
	p.do("mark the page again", chromedp.Evaluate[chromedp.Void](`window.__sameDocument = true`))
	app.Close()
	if err := cloud.Down(); err != nil {
		t.Fatal(err)
	}
	p.until("stream lost", `document.querySelector('#live')?.textContent !== 'live'`)
	if err := cloud.Up(ctx); err != nil {
		t.Fatal(err)
	}
	p.until("stream back", `document.querySelector('#live')?.textContent === 'live'`)
	app2, err := phone.ConnectWith(ctx, alice.Session, phone.ConnectOptions{Key: alice.Key})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { app2.Close() })
	err = harness.WaitFor(ctx, pageWait, func() error { // the car reconnects to the restarted broker
		rep, err := app2.Send(ctx, phone.Request{VIN: mine, Action: protocol.ActionUnlock}, nil)
		if err == nil && rep.Status != protocol.ReplyExecuted {
			err = fmt.Errorf("unlock: %+v", rep)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	p.until("lock state after the restart", lockCell+` === 'unlocked'`)
	p.until("no reload", `window.__sameDocument === true`)
	p.screenshot("after-restart")
}
