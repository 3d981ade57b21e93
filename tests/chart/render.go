// render renders a Helm chart like `helm template` does, without Helm (there
// is none here): Go's text/template with sprig v3 (Debian's
// golang-github-masterminds-sprig-dev, the library Helm uses) and Helm's own
// functions re-implemented as Helm's engine does them: include, tpl,
// required, toYaml/fromYaml (sigs.k8s.io/yaml's JSON-then-YAML round trip,
// here with yaml.v2 from golang-gopkg-yaml.v2-dev), toJson/fromJson, lookup
// (always empty, as in `helm template`), and .Files.Get. Values files are
// merged over the chart's values.yaml as Helm merges them (maps key by key,
// anything else replaced, null deletes). values.schema.json is not checked
// here (autoscaler/tests/chart.rs does that with the jsonschema crate).
//
// GOPATH mode, Debian's Go libraries, no network:
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go run tests/chart/render.go \
//	  -chart charts/usher -release usher -namespace lms [-f values.yaml]... \
//	  [-kube-version v1.30.0] [-include-crds]
//
// It prints the manifests (one `# Source:` document per template, like Helm),
// then NOTES.txt after a `# NOTES.txt` line, and exits 1 with Helm-like
// error text when a template fails.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/Masterminds/sprig"
	yaml "gopkg.in/yaml.v2"
)

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// toJSONCompatible turns yaml.v2's map[interface{}]interface{} into
// map[string]interface{} (what sigs.k8s.io/yaml's YAML-to-JSON step does).
func toJSONCompatible(v interface{}) interface{} {
	switch t := v.(type) {
	case map[interface{}]interface{}:
		m := make(map[string]interface{}, len(t))
		for k, val := range t {
			m[fmt.Sprint(k)] = toJSONCompatible(val)
		}
		return m
	case []interface{}:
		out := make([]interface{}, len(t))
		for i, val := range t {
			out[i] = toJSONCompatible(val)
		}
		return out
	}
	return v
}

// yamlToJSONValue parses YAML like sigs.k8s.io/yaml.Unmarshal into an
// interface{}: through JSON, so numbers become float64.
func yamlToJSONValue(text string, out interface{}) error {
	var raw interface{}
	if err := yaml.Unmarshal([]byte(text), &raw); err != nil {
		return err
	}
	j, err := json.Marshal(toJSONCompatible(raw))
	if err != nil {
		return err
	}
	return json.Unmarshal(j, out)
}

// toYAML is Helm's toYaml: sigs.k8s.io/yaml.Marshal (JSON, then YAML with
// sorted keys), without the trailing newline.
func toYAML(v interface{}) string {
	j, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	var obj interface{}
	if err := yaml.Unmarshal(j, &obj); err != nil {
		return ""
	}
	data, err := yaml.Marshal(obj)
	if err != nil {
		return ""
	}
	return strings.TrimSuffix(string(data), "\n")
}

func fromYAML(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := yamlToJSONValue(str, &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

func fromYAMLArray(str string) []interface{} {
	a := []interface{}{}
	if err := yamlToJSONValue(str, &a); err != nil {
		a = []interface{}{err.Error()}
	}
	return a
}

func toJSON(v interface{}) string {
	data, err := json.Marshal(v)
	if err != nil {
		return ""
	}
	return string(data)
}

func fromJSON(str string) map[string]interface{} {
	m := map[string]interface{}{}
	if err := json.Unmarshal([]byte(str), &m); err != nil {
		m["Error"] = err.Error()
	}
	return m
}

// coalesce merges `over` into `base` as Helm merges values files.
func coalesce(base, over map[string]interface{}) {
	for k, v := range over {
		if v == nil {
			delete(base, k)
			continue
		}
		if bm, ok := base[k].(map[string]interface{}); ok {
			if om, ok := v.(map[string]interface{}); ok {
				coalesce(bm, om)
				continue
			}
		}
		base[k] = v
	}
}

// Files is .Files: the chart's files by path.
type Files struct{ dir string }

// Get returns a file's content, or "" (as Helm does for a missing file).
func (f Files) Get(name string) string {
	data, err := os.ReadFile(filepath.Join(f.dir, filepath.FromSlash(name)))
	if err != nil {
		return ""
	}
	return string(data)
}

// GetBytes returns a file's content as bytes.
func (f Files) GetBytes(name string) []byte { return []byte(f.Get(name)) }

func main() {
	chartDir := flag.String("chart", "", "the chart directory")
	release := flag.String("release", "usher", "the release name")
	namespace := flag.String("namespace", "default", "the release namespace")
	includeCRDs := flag.Bool("include-crds", false, "print crds/ first, as helm template --include-crds")
	kubeVersion := flag.String("kube-version", "v1.30.0", ".Capabilities.KubeVersion, as helm template --kube-version")
	var valueFiles multiFlag
	flag.Var(&valueFiles, "f", "a values file (repeatable)")
	flag.Parse()
	if *chartDir == "" {
		fmt.Fprintln(os.Stderr, "usage: render -chart DIR [-release NAME] [-namespace NS] [-f values.yaml]...")
		os.Exit(2)
	}
	fail := func(format string, args ...interface{}) {
		fmt.Fprintf(os.Stderr, "Error: "+format+"\n", args...)
		os.Exit(1)
	}

	chart := map[string]interface{}{}
	chartYAML, err := os.ReadFile(filepath.Join(*chartDir, "Chart.yaml"))
	if err != nil {
		fail("%v", err)
	}
	if err := yamlToJSONValue(string(chartYAML), &chart); err != nil {
		fail("Chart.yaml: %v", err)
	}
	// .Chart's fields are capitalised (Name, Version, AppVersion, ...).
	chartObj := map[string]interface{}{}
	for k, v := range chart {
		chartObj[strings.ToUpper(k[:1])+k[1:]] = v
	}
	chartName, _ := chart["name"].(string)

	values := map[string]interface{}{}
	defaults, err := os.ReadFile(filepath.Join(*chartDir, "values.yaml"))
	if err != nil {
		fail("%v", err)
	}
	if err := yamlToJSONValue(string(defaults), &values); err != nil {
		fail("values.yaml: %v", err)
	}
	for _, f := range valueFiles {
		text, err := os.ReadFile(f)
		if err != nil {
			fail("%v", err)
		}
		over := map[string]interface{}{}
		if err := yamlToJSONValue(string(text), &over); err != nil {
			fail("%s: %v", f, err)
		}
		coalesce(values, over)
	}

	var files []string
	err = filepath.Walk(filepath.Join(*chartDir, "templates"), func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		files = append(files, path)
		return nil
	})
	if err != nil {
		fail("%v", err)
	}
	sort.Strings(files)

	root := template.New("gotpl")
	// As Helm: missing keys render as nothing, not "<no value>".
	root.Option("missingkey=zero")
	funcs := sprig.TxtFuncMap()
	delete(funcs, "env")
	delete(funcs, "expandenv")
	const recursionMaxNums = 1000
	includedNames := map[string]int{}
	funcs["toYaml"] = toYAML
	funcs["fromYaml"] = fromYAML
	funcs["fromYamlArray"] = fromYAMLArray
	funcs["toJson"] = toJSON
	funcs["fromJson"] = fromJSON
	funcs["include"] = func(name string, data interface{}) (string, error) {
		var buf strings.Builder
		if v, ok := includedNames[name]; ok {
			if v > recursionMaxNums {
				return "", fmt.Errorf("rendering template has a nested reference name: %s", name)
			}
			includedNames[name]++
		} else {
			includedNames[name] = 1
		}
		err := root.ExecuteTemplate(&buf, name, data)
		includedNames[name]--
		return buf.String(), err
	}
	funcs["tpl"] = func(tpl string, vals interface{}) (string, error) {
		t, err := root.Clone()
		if err != nil {
			return "", err
		}
		t, err = t.New("tpl").Parse(tpl)
		if err != nil {
			return "", err
		}
		var buf strings.Builder
		if err := t.Execute(&buf, vals); err != nil {
			return "", err
		}
		return strings.ReplaceAll(buf.String(), "<no value>", ""), nil
	}
	funcs["required"] = func(warn string, val interface{}) (interface{}, error) {
		if val == nil {
			return val, errors.New(warn)
		}
		if s, ok := val.(string); ok && s == "" {
			return val, errors.New(warn)
		}
		return val, nil
	}
	funcs["lookup"] = func(string, string, string, string) (map[string]interface{}, error) {
		return map[string]interface{}{}, nil
	}
	root.Funcs(funcs)

	names := make([]string, 0, len(files))
	for _, path := range files {
		rel, _ := filepath.Rel(*chartDir, path)
		name := chartName + "/" + filepath.ToSlash(rel)
		text, err := os.ReadFile(path)
		if err != nil {
			fail("%v", err)
		}
		if _, err := root.New(name).Parse(string(text)); err != nil {
			fail("parse error in %q: %v", name, err)
		}
		names = append(names, name)
	}

	parts := strings.SplitN(strings.TrimPrefix(*kubeVersion, "v"), ".", 3)
	if len(parts) < 2 {
		fail("-kube-version %q is not vMAJOR.MINOR.PATCH", *kubeVersion)
	}
	major, minor := parts[0], parts[1]
	top := func(name string) map[string]interface{} {
		return map[string]interface{}{
			"Values": values,
			"Chart":  chartObj,
			"Release": map[string]interface{}{
				"Name": *release, "Namespace": *namespace, "Service": "Helm",
				"IsInstall": true, "IsUpgrade": false, "Revision": 1,
			},
			"Capabilities": map[string]interface{}{
				"KubeVersion": map[string]interface{}{"Version": *kubeVersion, "Major": major, "Minor": minor},
			},
			"Files":    Files{dir: *chartDir},
			"Template": map[string]interface{}{"Name": name, "BasePath": chartName + "/templates"},
		}
	}

	var out bytes.Buffer
	if *includeCRDs {
		crds, _ := filepath.Glob(filepath.Join(*chartDir, "crds", "*.yaml"))
		sort.Strings(crds)
		for _, c := range crds {
			rel, _ := filepath.Rel(*chartDir, c)
			text, _ := os.ReadFile(c)
			fmt.Fprintf(&out, "---\n# Source: %s/%s\n%s\n", chartName, filepath.ToSlash(rel), strings.TrimSpace(string(text)))
		}
	}
	notes := ""
	for _, name := range names {
		base := filepath.Base(name)
		if strings.HasPrefix(base, "_") {
			continue
		}
		var buf strings.Builder
		if err := root.ExecuteTemplate(&buf, name, top(name)); err != nil {
			fail("%v", err)
		}
		text := strings.ReplaceAll(buf.String(), "<no value>", "")
		if base == "NOTES.txt" {
			notes = text
			continue
		}
		if strings.TrimSpace(text) == "" {
			continue
		}
		fmt.Fprintf(&out, "---\n# Source: %s\n%s\n", name, strings.TrimSpace(text))
	}
	if notes != "" {
		fmt.Fprintf(&out, "# NOTES.txt\n%s", notes)
	}
	os.Stdout.Write(out.Bytes())
}
