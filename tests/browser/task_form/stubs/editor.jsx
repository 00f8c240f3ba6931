// The modal's JSON editor (Monaco) opens only for a parameter whose default is a list or an object; task.yaml
// writes lists as comma-joined strings, so it must never appear: the page reports it if it does.
export default function Editor() {
  window.__jsonEditorShown__ = true;
  return <div className="json-editor-stub">JSON editor</div>;
}
export function setTheme() {}
