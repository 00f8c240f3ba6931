// The host's modal around DynamicPluginForm, reduced to what decides the submitted values: EvalModal.tsx passes
// the index.json defaults as `config`, TrainingModalLoRA.tsx passes {} for a new template; both submit
// Object.fromEntries(new FormData(form)) and then Object.assign it with window.currentFormData.
import * as React from 'react';
import { createRoot } from 'react-dom/client';
import DynamicPluginForm from 'host/DynamicPluginForm.tsx';

function defaultsOf(indexJson) {
  return Object.fromEntries(Object.entries(indexJson.parameters).map(([key, value]) => [key, value.default]));
}

function HostModal({ indexJson, mode }) {
  const [config, setConfig] = React.useState(null);
  React.useEffect(() => setConfig(mode === 'eval' ? defaultsOf(indexJson) : {}), []);
  const onSubmit = (event) => {
    event.preventDefault();
    const formJson = Object.fromEntries(new FormData(event.currentTarget).entries());
    window.__formDataOnly__ = { ...formJson };
    if (window.currentFormData) Object.assign(formJson, window.currentFormData);
    if (mode === 'train') formJson.type = indexJson.train_type || 'LoRA'; // the job type the dispatch reads
    window.__submitted__ = formJson;
  };
  return (
    <form id="host-form" onSubmit={onSubmit} style={{ maxWidth: 720, padding: 16 }}>
      {config && <DynamicPluginForm experimentInfo={{ id: 1 }} plugin={indexJson.uniqueId} config={config} />}
      <button id="host-submit" type="submit">Submit</button>
    </form>
  );
}

window.renderHostForm = (indexJsonText, mode) => {
  window.__INDEX_JSON_TEXT__ = indexJsonText;
  window.currentFormData = undefined;
  window.__submitted__ = undefined;
  createRoot(document.getElementById('root')).render(<HostModal indexJson={JSON.parse(indexJsonText)} mode={mode} />);
};
