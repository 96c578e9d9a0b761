package console_test

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"telematics/gateway/harness"
	"telematics/gateway/server"
	"telematics/gateway/twofa"
	"telematics/pkg/mqttc"
	"telematics/pkg/phone"
	"telematics/pkg/protocol"
)

// A command's life on the car page: an executed unlock shows when it was received, decided,
// sent and executed, and its latency; a refused request shows the reason; a command to a car
// that never answers shows expired. Then the admin reissues that car's credentials with a
// device certificate (the box is off for a car without one, on once it has one), and a
// viewer's reissue is refused by the server.
func TestTimelineStatesAndReissueWithCertificate(t *testing.T) {
	chromium(t)
	ctx := context.Background()
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap, Configure: func(cfg *server.Config) {
		cfg.TwoFA.Mode = twofa.ModeOff
		cfg.Commands.ResultGrace = 200 * time.Millisecond
	}})
	creds, err := cloud.Provision(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	answering, silent := creds[0].VIN, creds[1]
	harness.MustStartFleet(t, harness.FleetOptions{BrokerURL: cloud.BrokerURL(), Creds: creds[:1], TelemetryInterval: 200 * time.Millisecond})
	// A car that comes online and never answers: its commands end expired.
	sc, err := mqttc.Dial(ctx, mqttc.Options{BrokerURL: cloud.BrokerURL(), ClientID: silent.ClientID, Username: silent.Username, Password: silent.Token})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sc.Close() })
	online, _ := json.Marshal(protocol.VehicleStatus{V: 1, Status: protocol.StatusOnline, TsMs: time.Now().UnixMilli()})
	if err := sc.Publish(ctx, protocol.VehicleTopic(silent.VIN, protocol.SuffixStatus), 1, true, online); err != nil {
		t.Fatal(err)
	}
	if err := cloud.WaitOnline(ctx, pageWait, answering, silent.VIN); err != nil {
		t.Fatal(err)
	}
	alice := &harness.Person{Name: "alice", Password: "alice password 1"}
	bob := &harness.Person{Name: "bob", Password: "bob password 1"}
	apps := map[string]*phone.App{}
	for p, vin := range map[*harness.Person]string{alice: answering, bob: silent.VIN} {
		if err := cloud.AddUser(ctx, p.Name, p.Password, vin); err != nil {
			t.Fatal(err)
		}
		if err := p.Login(ctx, cloud); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Enroll(ctx, cloud); err != nil {
			t.Fatal(err)
		}
		if _, err := p.Pair(ctx, vin); err != nil {
			t.Fatal(err)
		}
		app, err := phone.ConnectWith(ctx, p.Session, phone.ConnectOptions{Key: p.Key})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { app.Close() })
		apps[p.Name] = app
	}
	admin := cloud.Client()
	for name, role := range map[string]string{"olga": "admin", "vera": "viewer"} {
		if _, err := admin.AddOperator(ctx, name, role, opPassword); err != nil {
			t.Fatal(err)
		}
	}

	p := newPage(t, cloud.HTTPURL())
	p.enroll("olga")
	p.openCar(answering)

	// Executed: every state with its time, and the latency.
	rep, err := apps["alice"].Send(ctx, phone.Request{VIN: answering, Action: protocol.ActionUnlock}, nil)
	if err != nil || rep.Status != protocol.ReplyExecuted {
		t.Fatalf("unlock: %+v %v", rep, err)
	}
	row := fmt.Sprintf(`(document.querySelector('#cmd-%s')?.textContent ?? '')`, rep.ID)
	steps := fmt.Sprintf(`[...document.querySelectorAll('#cmd-%s td.states div')]`, rep.ID)
	p.until("the unlock's states on the timeline", row+`.includes('received') && `+row+`.includes('decided: accepted') && `+
		row+`.includes('sent to the car') && `+row+`.includes('executed') && `+row+`.includes('alice') && `+row+`.includes('cloud')`)
	p.until("each state with its time", steps+`.length >= 4 && `+steps+`.every((d) => /^\d{2}:\d{2}:\d{2}\.\d{3} /.test(d.textContent))`)
	p.until("steps in order", steps+`.map((d) => d.dataset.step).join(',').startsWith('received,decided,sent,')`)
	p.until("a latency", fmt.Sprintf(`/^\d+ ms/.test(document.querySelector('#cmd-%s td.latency')?.textContent ?? '')`, rep.ID))

	// Refused: bob's key is not on this car; the reason is shown.
	rep, err = apps["bob"].Send(ctx, phone.Request{VIN: answering, Action: protocol.ActionUnlock}, nil)
	if err != nil || rep.Status != protocol.ReplyRejected || rep.Reason == "" {
		t.Fatalf("bob's unlock of alice's car: %+v %v", rep, err)
	}
	row = fmt.Sprintf(`(document.querySelector('#cmd-%s')?.textContent ?? '')`, rep.ID)
	p.until("the refusal with its reason", row+`.includes('received') && `+row+fmt.Sprintf(`.includes('decided: refused (%s)') && `, rep.Reason)+row+`.includes('bob')`)
	p.screenshot("car-timeline-states")

	// Expired: the silent car never answers.
	p.openCar(silent.VIN)
	rep, err = apps["bob"].Send(ctx, phone.Request{VIN: silent.VIN, Action: protocol.ActionHonk, Lifetime: time.Second}, nil)
	if err != nil || rep.Status != protocol.ReplyExpired {
		t.Fatalf("honk of the silent car: %+v %v", rep, err)
	}
	row = fmt.Sprintf(`(document.querySelector('#cmd-%s')?.textContent ?? '')`, rep.ID)
	p.until("the expiry", row+`.includes('sent to the car') && `+row+`.includes('expired')`)
	p.screenshot("car-timeline-expired")

	// Reissue with a device certificate: off for a car that has none; checked, the page shows
	// the certificate and its key once, as downloads.
	p.until("certificate box off", `document.querySelector('#car-state') && document.querySelector('#reissue-cert')?.checked === false`)
	p.do("accept the confirmation", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`))
	p.click("reissue with a certificate", "#reissue-cert", "#car-admin-reissue")
	p.until("certificate shown once", `document.querySelector('#reissued-cert') !== null && `+
		`(document.querySelector('#reissued')?.textContent ?? '').includes('BEGIN CERTIFICATE') && `+
		`(document.querySelector('#download-cert')?.getAttribute('download') ?? '').endsWith('-cert.pem') && `+
		`(document.querySelector('#download-key')?.href ?? '').startsWith('blob:')`)
	p.screenshot("car-reissued-with-certificate")
	p.do("reload the car page", chromedp.Reload())
	p.until("the reloaded car page", `document.querySelector('#car-state')?.offsetParent != null`)
	p.until("certificate box on for a car that has one", `document.querySelector('#reissue-cert')?.checked === true`)

	// A viewer's reissue is refused by the server.
	p.logout()
	p.enroll("vera")
	p.openCar(silent.VIN)
	p.until("box on", `document.querySelector('#reissue-cert')?.checked === true`)
	p.do("accept the confirmation as a viewer", chromedp.Evaluate[chromedp.Void](`window.confirm = () => true`))
	p.click("reissue as a viewer", "#car-admin-reissue")
	p.until("viewer refused with 403", `(document.querySelector('#car-admin-result')?.textContent ?? '').startsWith('403')`)
	p.screenshot("viewer-reissue-refused")
}

// With more cars than fit on a screen, the fleet list draws only the rows in view, yet every
// car can be scrolled to, searched for and filtered; the count says which rows are shown.
func TestFleetListReachesEveryCar(t *testing.T) {
	chromium(t)
	ctx := context.Background()
	const n = 3000 // more than one part of the stream's fleet event
	cloud := harness.MustStart(t, harness.Options{PasswordParams: &cheap})
	if _, err := cloud.Client().AddOperator(ctx, "olga", "viewer", opPassword); err != nil {
		t.Fatal(err)
	}
	seedFleet(t, cloud, n)
	p := newPage(t, cloud.HTTPURL())
	p.enroll("olga")
	p.until("every car counted", fmt.Sprintf(`(document.querySelector('#count')?.textContent ?? '').startsWith('%d of %d cars, showing 1–')`, n, n))
	rows := `document.querySelectorAll('#fleet-rows tr:not(.spacer)').length`
	p.until("a window of rows, not all", rows+` > 10 && `+rows+` < 100`)
	p.until("the first car listed", `document.querySelector('#car-PERF0000000000000') !== null`)
	p.screenshot("fleet-virtual-top")

	last := fmt.Sprintf("PERF%013d", n-1)
	p.do("scroll to the end", chromedp.Evaluate[chromedp.Void](`document.querySelector('#fleet-scroll').scrollTop = 1e9`))
	p.until("the last car listed", fmt.Sprintf(`document.querySelector('#car-%s') !== null && (document.querySelector('#count')?.textContent ?? '').endsWith('–%d')`, last, n))
	p.until("still a window of rows", rows+` < 100`)
	p.until("the last row in view", fmt.Sprintf(`(() => { const r = document.querySelector('#car-%s').getBoundingClientRect(), b = document.querySelector('#fleet-scroll').getBoundingClientRect();
		return r.top >= b.top && r.bottom <= b.bottom + 1; })()`, last))
	p.screenshot("fleet-virtual-end")

	p.do("search one car", chromedp.SendKeys("#search", "perf0000000001234"))
	p.until("one car found", `(document.querySelector('#count')?.textContent ?? '').startsWith('1 of 3000 cars') && document.querySelector('#car-PERF0000000001234') !== null`)
	p.do("clear the search and filter offline", chromedp.Evaluate[chromedp.Void](`document.querySelector('#search').value = '';
		const f = document.querySelector('#filter'); f.value = 'offline'; f.dispatchEvent(new Event('change'))`))
	p.until("the offline tenth", `(document.querySelector('#count')?.textContent ?? '').startsWith('300 of 3000 cars')`)
}

// openCar shows vin's car page by its link's hash, as a click would: a same-document
// navigation, which chromedp.Navigate may wait on for a load that never comes.
func (p *page) openCar(vin string) {
	p.t.Helper()
	p.do("open the car page of "+vin, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`location.hash = '#car/%s'`, vin)))
	p.until("the car page of "+vin, fmt.Sprintf(`document.querySelector('#car h2')?.textContent === '%s' && document.querySelector('#car-state') !== null`, vin))
}
