// The Queue Task modal's parameter section, rendered from the app's own ParameterOverridesSection.tsx and
// ParameterInput.tsx, with the modal's own parseParameter and validateParameter (taken out of
// QueueTaskModal/index.tsx at bundle time). The state updates and the submit below restate the modal's
// (index.tsx: updateParameterValue, updateParameterValueWithValidate, toggleCustomModelDataset, handleSubmit's
// `config[key.trim()] = value` and validateAllParameters) and Tasks.tsx handleQueueSubmit, which sends the task's
// parameter declarations as `parameters` and the submitted values as `config`.
import * as React from 'react';
import { createRoot } from 'react-dom/client';
import { CssVarsProvider } from '@mui/joy/styles';
import ParameterOverridesSection from 'app/ParameterOverridesSection.tsx';
import { parseParameter, validateParameter } from 'app/modalRules.ts';

// what the modal's pickers list (Models.LocalList, Dataset.LocalList), as the app's API returns them
const MODELS = [{ model_id: 'GSAI-ML/LLaDA-8B-Instruct' }, { model_id: 'tiny-llada' }];
const DATASETS = [{ dataset_id: 'alpaca-tiny' }, { dataset_id: 'ultrafeedback-tiny' }];

function Modal({ declared }) {
  const [parameters, setParameters] = React.useState(() =>
    Object.entries(declared).map(([key, value]) => parseParameter(key, value)),
  );
  const [custom, setCustom] = React.useState(new Set());
  const [errors, setErrors] = React.useState({});
  const onValueChange = React.useCallback((index, value) => {
    setParameters((prev) => {
      const next = [...prev];
      next[index] = { ...next[index], value };
      return next;
    });
  }, []);
  const onValueChangeWithValidate = React.useCallback((index, value) => {
    setParameters((prev) => {
      const next = [...prev];
      next[index] = { ...next[index], value };
      const error = validateParameter(next[index]);
      setErrors((prevErrors) => {
        const updated = { ...prevErrors };
        if (error) updated[index] = error;
        else delete updated[index];
        return updated;
      });
      return next;
    });
  }, []);
  const onToggleCustom = React.useCallback((index, isCustom) => {
    if (isCustom) {
      setParameters((prev) => {
        const next = [...prev];
        if (next[index].value === null || next[index].value === undefined) next[index] = { ...next[index], value: '' };
        return next;
      });
      setCustom((prev) => new Set(prev).add(index));
    } else {
      setCustom((prev) => {
        const next = new Set(prev);
        next.delete(index);
        return next;
      });
    }
  }, []);
  const submit = () => {
    let refused = null;
    for (const param of parameters) {
      if (!param.key.trim()) continue;
      const error = validateParameter(param);
      if (error) {
        refused = `${param.key}: ${error}`;
        break;
      }
    }
    const config = {};
    parameters.forEach(({ key, value }) => {
      if (key.trim()) config[key.trim()] = value;
    });
    window.__submitted__ = { refused, parameters: declared, config: refused ? null : config };
  };
  return (
    <div style={{ maxWidth: 860, padding: 16 }}>
      <ParameterOverridesSection
        show
        onToggle={() => {}}
        parameters={parameters}
        isSubmitting={false}
        customModelDataset={custom}
        validationErrors={errors}
        models={MODELS}
        datasets={DATASETS}
        onValueChange={onValueChange}
        onValueChangeWithValidate={onValueChangeWithValidate}
        onToggleCustomModelDataset={onToggleCustom}
      />
      <button id="queue-submit" type="button" onClick={submit} style={{ marginTop: 16 }}>
        Submit
      </button>
    </div>
  );
}

window.renderTaskForm = (declaredJson) => {
  window.__submitted__ = undefined;
  window.__jsonEditorShown__ = false;
  createRoot(document.getElementById('root')).render(
    <CssVarsProvider>
      <Modal declared={JSON.parse(declaredJson)} />
    </CssVarsProvider>,
  );
};
