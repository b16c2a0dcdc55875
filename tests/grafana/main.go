// Command dashcheck imports Grafana dashboard JSON files the way the pinned
// grafana-foundation-sdk does, and reports every way they do not fit its schema.
//
//	go build -o dashcheck . && ./dashcheck dashboards/json/*.json
//
// Each file is decoded with Dashboard.UnmarshalJSONStrict, which rejects unknown
// fields, wrong types and missing required fields (panel options and
// fieldConfig.defaults.custom by the panel plugin's schema); Validate then checks
// the schema's constraints. Where the SDK (v0.0.22) is lenient or loses values,
// this program decodes the part itself:
//
//   - a panel's targets are decoded strictly only when each target names its own
//     datasource (targets are read before the panel's datasource), else they land
//     in an untyped bag: every target here is decoded as a Prometheus query, and
//     one whose datasource (its own, else its panel's) is not Prometheus fails;
//   - the strict decoders return an empty, non-nil error list on success, so
//     Dashboard drops every panel, Panel its options and targets, and
//     AnnotationQuery its target: these are decoded one by one here;
//   - fieldConfig outside `custom` is decoded leniently: it is decoded strictly here;
//   - a panel type the SDK has no schema for has its options unchecked: it fails.
//
// Last, the decoded dashboard is encoded again and every input value must
// survive the round trip (the encoding may add defaults; it may drop or change nothing).
//
// Prints one "path: problem" line per problem (or "path: ok") and exits 1 when any
// file has a problem; 2 on bad usage.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"reflect"
	"sort"
	"strconv"

	"github.com/grafana/grafana-foundation-sdk/go/cog"
	"github.com/grafana/grafana-foundation-sdk/go/cog/plugins"
	"github.com/grafana/grafana-foundation-sdk/go/cog/variants"
	"github.com/grafana/grafana-foundation-sdk/go/dashboard"
	"github.com/grafana/grafana-foundation-sdk/go/prometheus"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: dashcheck DASHBOARD.json...")
		os.Exit(2)
	}
	plugins.RegisterDefaultPlugins()
	failed := false
	for _, path := range os.Args[1:] {
		raw, err := os.ReadFile(path)
		if err != nil {
			fmt.Printf("%s: %v\n", path, err)
			failed = true
			continue
		}
		problems := check(raw)
		for _, p := range problems {
			fmt.Printf("%s: %s\n", path, p)
		}
		if len(problems) > 0 {
			failed = true
		} else {
			fmt.Printf("%s: ok\n", path)
		}
	}
	if failed {
		os.Exit(1)
	}
}

// report collects problems once each, in the order found.
type report struct {
	list []string
	seen map[string]bool
}

func (r *report) addf(format string, args ...any) {
	message := fmt.Sprintf(format, args...)
	if !r.seen[message] {
		r.seen[message] = true
		r.list = append(r.list, message)
	}
}

// add records the errors in err under path `at`. The SDK's strict decoders return
// their error list even when it is empty, so an error that is not nil may hold none.
func (r *report) add(at string, err error) {
	if err == nil {
		return
	}
	var many cog.BuildErrors
	if !errors.As(err, &many) {
		many = cog.MakeBuildErrors("", err)
	}
	for _, e := range many {
		path := e.Path
		switch {
		case at == "":
		case path == "":
			path = at
		default:
			path = at + "." + path
		}
		if path == "" {
			r.addf("%s", e.Message)
		} else {
			r.addf("%s: %s", path, e.Message)
		}
	}
}

// check returns every problem found in one dashboard's JSON.
func check(raw []byte) []string {
	r := &report{seen: map[string]bool{}}
	var board dashboard.Dashboard
	r.add("", board.UnmarshalJSONStrict(raw))
	var doc struct {
		Panels      []json.RawMessage `json:"panels"`
		Annotations struct {
			List []json.RawMessage `json:"list"`
		} `json:"annotations"`
	}
	if err := json.Unmarshal(raw, &doc); err != nil {
		r.add("", err)
		return r.list
	}
	board.Panels = make([]dashboard.PanelOrRowPanel, len(doc.Panels))
	for i, rawPanel := range doc.Panels {
		board.Panels[i] = r.panelOrRow("panels["+strconv.Itoa(i)+"]", rawPanel)
	}
	for i, rawAnnotation := range doc.Annotations.List {
		if i >= len(board.Annotations.List) {
			break
		}
		var parts struct {
			Datasource *struct {
				Type string `json:"type"`
			} `json:"datasource"`
			Target json.RawMessage `json:"target"`
		}
		if json.Unmarshal(rawAnnotation, &parts) != nil || parts.Target == nil {
			continue // the strict decoding above reported it, or there is no target
		}
		kind := ""
		if parts.Datasource != nil {
			kind = parts.Datasource.Type
		}
		board.Annotations.List[i].Target = r.target("annotations.list["+strconv.Itoa(i)+"].target",
			parts.Target, kind)
	}
	r.add("", board.Validate())
	if len(r.list) == 0 {
		roundTrip(r, raw, board)
	}
	return r.list
}

// panelOrRow decodes one element of a dashboard's (or a row's) panels.
func (r *report) panelOrRow(at string, raw json.RawMessage) dashboard.PanelOrRowPanel {
	var parts struct {
		Type   string            `json:"type"`
		Panels []json.RawMessage `json:"panels"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		r.add(at, err)
		return dashboard.PanelOrRowPanel{}
	}
	if parts.Type != "row" {
		return dashboard.PanelOrRowPanel{Panel: r.panel(at, raw)}
	}
	row := &dashboard.RowPanel{}
	r.add(at, row.UnmarshalJSONStrict(raw))
	row.Panels = make([]dashboard.Panel, 0, len(parts.Panels))
	for i, inner := range parts.Panels {
		if p := r.panel(at+".panels["+strconv.Itoa(i)+"]", inner); p != nil {
			row.Panels = append(row.Panels, *p)
		}
	}
	return dashboard.PanelOrRowPanel{RowPanel: row}
}

// panel decodes one panel strictly, its targets and its fieldConfig included.
func (r *report) panel(at string, raw json.RawMessage) *dashboard.Panel {
	panel := &dashboard.Panel{}
	r.add(at, panel.UnmarshalJSONStrict(raw))
	var parts struct {
		Options     json.RawMessage   `json:"options"`
		Targets     []json.RawMessage `json:"targets"`
		FieldConfig json.RawMessage   `json:"fieldConfig"`
	}
	if err := json.Unmarshal(raw, &parts); err != nil {
		return panel // the strict decoding above reported it
	}
	plugin, known := cog.ConfigForPanelcfgVariant(panel.Type)
	if !known {
		r.addf("%s.type: panel type %q has no schema in the SDK (its options would go unchecked)", at, panel.Type)
	} else if parts.Options != nil && string(parts.Options) != "null" {
		// Checked strictly above, but dropped: keep the value for the round trip.
		if options, err := plugin.OptionsUnmarshaler(parts.Options); err == nil {
			panel.Options = options
		}
	}
	kind := ""
	if panel.Datasource != nil && panel.Datasource.Type != nil {
		kind = *panel.Datasource.Type
	}
	panel.Targets = nil
	for j, rawTarget := range parts.Targets {
		if query := r.target(at+".targets["+strconv.Itoa(j)+"]", rawTarget, kind); query != nil {
			panel.Targets = append(panel.Targets, query)
		}
	}
	if parts.FieldConfig != nil && string(parts.FieldConfig) != "null" {
		var source dashboard.FieldConfigSource
		r.add(at+".fieldConfig", source.UnmarshalJSONStrict(parts.FieldConfig))
	}
	return panel
}

// target decodes one query strictly as a Prometheus query; `kind` is the datasource type
// it inherits when it names none itself.
func (r *report) target(at string, raw json.RawMessage, kind string) variants.Dataquery {
	var own struct {
		Datasource *struct {
			Type string `json:"type"`
		} `json:"datasource"`
	}
	if err := json.Unmarshal(raw, &own); err != nil {
		r.add(at, err)
		return nil
	}
	if own.Datasource != nil && own.Datasource.Type != "" {
		kind = own.Datasource.Type
	}
	if kind != "prometheus" {
		r.addf("%s: datasource type %q, want \"prometheus\" (only Prometheus queries are checked)", at, kind)
		return nil
	}
	query := &prometheus.Dataquery{}
	r.add(at, query.UnmarshalJSONStrict(raw))
	return query
}

// roundTrip re-encodes the decoded dashboard and reports every input value that did
// not survive (the encoding may add fields the schema gives defaults; it may not drop or
// change any).
func roundTrip(r *report, raw []byte, board dashboard.Dashboard) {
	encoded, err := json.Marshal(board)
	if err != nil {
		r.addf("re-encoding: %v", err)
		return
	}
	var before, after any
	if err := decode(raw, &before); err != nil {
		r.add("", err)
		return
	}
	if err := decode(encoded, &after); err != nil {
		r.addf("re-encoded: %v", err)
		return
	}
	kept(r, "", before, after)
}

func decode(raw []byte, out *any) error {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	return dec.Decode(out)
}

// kept reports every value of want that got lacks or holds otherwise.
func kept(r *report, path string, want, got any) {
	switch w := want.(type) {
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok {
			r.addf("%s: the round trip made an object %v", path, got)
			return
		}
		keys := make([]string, 0, len(w))
		for k := range w {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			sub := k
			if path != "" {
				sub = path + "." + k
			}
			if _, ok := g[k]; !ok {
				r.addf("%s: dropped by the round trip", sub)
				continue
			}
			kept(r, sub, w[k], g[k])
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			r.addf("%s: the round trip made the list %v", path, got)
			return
		}
		for i := range w {
			kept(r, path+"["+strconv.Itoa(i)+"]", w[i], g[i])
		}
	case json.Number:
		g, ok := got.(json.Number)
		if !ok {
			r.addf("%s: the round trip changed %v to %v", path, w, got)
			return
		}
		wf, werr := w.Float64()
		gf, gerr := g.Float64()
		if werr != nil || gerr != nil || wf != gf {
			r.addf("%s: the round trip changed %v to %v", path, w, got)
		}
	default:
		if !reflect.DeepEqual(want, got) {
			r.addf("%s: the round trip changed %v to %v", path, want, got)
		}
	}
}
